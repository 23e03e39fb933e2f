"""sftscope: is this fine-tuning run still learning, or overfitting? Ask its interactions."""

from .decompose import AndOrDecomposition, Interaction, and_or_interactions, mobius_transform, zeta_transform
from .errors import SftscopeError
from .extract import Request, extract_interactions, extract_many, select_players
from .game import MaskedGame, NaiveEngine, baseline_vector
from .interactions import InteractionResult, read_metadata
from .monitor import InteractionMonitor
from .players import Players
from .prefix import PrefixEngine

__all__ = [
    "AndOrDecomposition",
    "Interaction",
    "InteractionMonitor",
    "InteractionResult",
    "MaskedGame",
    "NaiveEngine",
    "Players",
    "PrefixEngine",
    "Request",
    "SftscopeError",
    "and_or_interactions",
    "baseline_vector",
    "extract_interactions",
    "extract_many",
    "mobius_transform",
    "read_metadata",
    "select_players",
    "zeta_transform",
]
__version__ = "0.2.0"
