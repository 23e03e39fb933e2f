"""sftscope: is this fine-tuning run still learning, or overfitting? Ask its interactions.

The public names below are imported on first use, so that ``sftscope --help``
and a one-line error in a config file never wait for torch or transformers.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.7.0"

_EXPORTS = {
    "AndOrDecomposition": "decompose", "Interaction": "decompose", "and_or_interactions": "decompose",
    "mobius_transform": "decompose", "zeta_transform": "decompose",
    "SftscopeError": "errors",
    "Request": "extract", "extract_interactions": "extract", "extract_many": "extract", "select_players": "extract",
    "MaskedGame": "game", "NaiveEngine": "game", "baseline_vector": "game",
    "InteractionResult": "interactions", "read_metadata": "interactions",
    "InteractionMonitor": "monitor",
    "Players": "players",
    "PrefixEngine": "prefix",
}
__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:  # for type checkers and IDEs: the same names, imported eagerly
    from .decompose import AndOrDecomposition, Interaction, and_or_interactions, mobius_transform, zeta_transform
    from .errors import SftscopeError
    from .extract import Request, extract_interactions, extract_many, select_players
    from .game import MaskedGame, NaiveEngine, baseline_vector
    from .interactions import InteractionResult, read_metadata
    from .monitor import InteractionMonitor
    from .players import Players
    from .prefix import PrefixEngine


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'sftscope' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
