"""The extraction result: players, target, every effect and the settings."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from .decompose import AndOrDecomposition, Interaction, popcount
from .players import Players
from .store import atomic_write

if TYPE_CHECKING:
    from .wholeprompt import WholePrompt

EFFECT_COLUMNS = ["kind", "bitmask", "words", "order", "effect", "salient", "value", "q"]


@dataclass
class InteractionResult:
    """Interactions of one model on one prompt (METHOD.md sections 1-4)."""

    prompt: str
    response: str
    players: Players
    target_id: int
    target_token: str
    decomposition: AndOrDecomposition
    settings: dict[str, Any] = field(default_factory=dict)
    whole: WholePrompt | None = None  # coverage and whole-prompt R² (wholeprompt.py)

    @property
    def values(self) -> np.ndarray:
        return self.decomposition.values

    def salient(self, tau: float | None = None, **kwargs) -> list[Interaction]:
        tau = self.settings.get("tau", 0.05) if tau is None else tau
        return self.decomposition.salient(tau, **kwargs)

    def to_dataframe(self) -> pd.DataFrame:
        """One row per effect (both kinds, every bitmask; order 0 rows are the bias parts).

        ``value`` and ``q`` are the game ``v(S)`` and its noise term at the mask
        ``S = bitmask``, repeated on both kinds' rows, so fidelity can be re-checked.
        """
        size = len(self.values)
        masks = np.arange(size)
        orders = popcount(size)
        salient = {(i.kind, i.mask) for i in self.salient()}
        words = [" ".join(self.players.names(int(m))) for m in masks]
        frames = []
        for kind, effects in (("AND", self.decomposition.and_effects), ("OR", self.decomposition.or_effects)):
            frames.append(
                pd.DataFrame(
                    {
                        "kind": kind,
                        "bitmask": masks,
                        "words": words,
                        "order": orders,
                        "effect": effects,
                        "salient": [(kind, int(m)) in salient for m in masks],
                        "value": self.values,
                        "q": self.decomposition.q,
                    }
                )
            )
        return pd.concat(frames, ignore_index=True)

    def metadata(self) -> dict[str, Any]:
        return {
            "prompt": self.prompt,
            "response": self.response,
            "players": asdict(self.players),
            "target_id": self.target_id,
            "target_token": self.target_token,
            "bias": self.decomposition.bias,
            "objective": self.decomposition.objective,
            "matching_error": self.decomposition.matching_error,
            "settings": self.settings,
            "whole_prompt": None if self.whole is None else self.whole.as_row(),
        }

    def to_parquet(self, path: str | os.PathLike) -> Path:
        """Write the effects table atomically; the metadata travels in the file's schema."""
        import pyarrow as pa  # noqa: PLC0415
        import pyarrow.parquet as pq  # noqa: PLC0415

        table = pa.Table.from_pandas(self.to_dataframe(), preserve_index=False)
        meta = dict(table.schema.metadata or {})
        meta[b"sftscope"] = json.dumps(self.metadata()).encode()
        table = table.replace_schema_metadata(meta)
        return atomic_write(Path(path), lambda tmp: pq.write_table(table, tmp))

    def top_table(self, k: int = 15) -> pd.DataFrame:
        rows = [
            {"kind": i.kind, "words": " & ".join(self.players.names(i.mask)) if i.kind == "AND"
             else " | ".join(self.players.names(i.mask)), "order": i.order, "effect": round(i.effect, 4)}
            for i in self.salient()[:k]
        ]
        return pd.DataFrame(rows, columns=["kind", "words", "order", "effect"])


def read_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The settings, players and target stored with an effects Parquet file."""
    import pyarrow.parquet as pq  # noqa: PLC0415

    meta = pq.read_schema(path).metadata or {}
    return json.loads(meta.get(b"sftscope", b"{}"))
