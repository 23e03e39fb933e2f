"""The game ``v(S)``: log-odds of the target token with masked words.

Masking replaces the input embeddings of every token of a masked player with
a baseline vector. Two engines compute the same values:

- ``NaiveEngine`` runs every masked prompt in full, in batches (the reference);
- ``PrefixEngine`` (``prefix.py``) computes each common prefix once and lets
  every mask below it attend to it in place.

Both implement ``GameEngine.values(game, masks)`` and ``values_batch(games)``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Literal, Protocol, Sequence

import numpy as np
import torch

from .errors import SftscopeError

log = logging.getLogger(__name__)

BaselineKind = Literal["mean", "pad", "zeros"]


@dataclass(frozen=True)
class MaskedGame:
    """One prompt's game: token ids, player token spans (sorted) and the target token."""

    input_ids: tuple[int, ...]
    spans: tuple[tuple[int, int], ...]
    target_id: int

    def __post_init__(self) -> None:
        previous_end = 0
        for start, end in self.spans:
            if not (previous_end <= start < end <= len(self.input_ids)):
                raise SftscopeError(f"player token spans must be sorted, disjoint and inside the prompt: {self.spans}")
            previous_end = end

    @property
    def n_players(self) -> int:
        return len(self.spans)

    def all_masks(self) -> np.ndarray:
        return np.arange(1 << self.n_players)


class GameEngine(Protocol):
    """Computes ``v(S)`` for the given bitmasks of one game."""

    def values(self, game: MaskedGame, masks: np.ndarray | None = None) -> np.ndarray: ...

    def values_batch(self, games: Sequence[MaskedGame], names: Sequence[str] | None = None) -> list[np.ndarray]: ...


def baseline_vector(model, tokenizer=None, kind: BaselineKind = "mean") -> torch.Tensor:
    """The vector that replaces a masked token's input embedding.

    ``mean`` (default) is the mean input embedding over the vocabulary: it
    exists for every model and is no particular word; ``pad`` uses the pad (or
    unk) token's embedding; ``zeros`` the zero vector. Computed through the
    embedding module, so models that scale embeddings (Gemma) stay consistent.
    """
    embed = model.get_input_embeddings()
    weight = embed.weight
    if kind == "zeros":
        return torch.zeros(weight.shape[1], dtype=weight.dtype, device=weight.device)
    if kind == "pad":
        token = None
        if tokenizer is not None:
            token = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.unk_token_id
        if token is None:
            raise SftscopeError("baseline 'pad' needs a tokenizer with a pad or unk token; use 'mean'")
        with torch.no_grad():
            return embed(torch.tensor([token], device=weight.device))[0]
    if kind == "mean":
        total = torch.zeros(weight.shape[1], dtype=torch.float64, device=weight.device)
        with torch.no_grad():
            for start in range(0, weight.shape[0], 8192):
                ids = torch.arange(start, min(start + 8192, weight.shape[0]), device=weight.device)
                total += embed(ids).double().sum(0)
        return (total / weight.shape[0]).to(weight.dtype)
    raise SftscopeError(f"unknown baseline {kind!r}: use mean, pad or zeros")


def log_odds(logits: torch.Tensor, target_id: int) -> torch.Tensor:
    """``log p(y) - log(1 - p(y))`` from last-position logits, computed stably."""
    logits = logits.float()
    target = logits[..., target_id]
    others = logits.clone()
    others[..., target_id] = -torch.inf
    return target - torch.logsumexp(others, dim=-1)


def check_finite(values: np.ndarray, where: str = "") -> np.ndarray:
    bad = np.flatnonzero(~np.isfinite(values))
    if bad.size:
        suffix = f" ({where})" if where else ""
        raise SftscopeError(f"model output is NaN/inf at mask {int(bad[0])} of {values.size}{suffix}")
    return values


def mask_to_embeddings(
    base: torch.Tensor, spans: Sequence[tuple[int, int]], masks: np.ndarray, baseline: torch.Tensor
) -> torch.Tensor:
    """``[len(masks), L, d]`` embeddings: player ``i`` absent from a mask is replaced.

    Masks over more than 62 players (word ablation on a long prompt) do not fit
    int64: numpy holds them as Python ints (dtype object), read bit by bit here.
    """
    batch = base.unsqueeze(0).repeat(len(masks), 1, 1)
    masks = np.asarray(masks)
    if masks.dtype.kind not in "iuO":
        raise SftscopeError(f"masks must be integers, got dtype {masks.dtype}")
    for i, (start, end) in enumerate(spans):
        bits = (np.array([(int(m) >> i) & 1 for m in masks]) if masks.dtype.kind in "Ou" else masks >> i & 1)
        absent = torch.as_tensor(bits == 0, device=base.device)
        batch[absent, start:end] = baseline
    return batch


class NaiveEngine:
    """Every masked prompt run in full, ``max_batch_tokens`` tokens per forward pass."""

    def __init__(self, model, baseline: torch.Tensor, *, max_batch_tokens: int = 16_384, progress=None) -> None:
        self.model = model
        self.baseline = baseline
        self.max_batch_tokens = max_batch_tokens
        self.tokens_computed = 0
        self.progress = progress  # a tqdm-like factory: one bar over the masks of each call

    @torch.no_grad()
    def values(self, game: MaskedGame, masks: np.ndarray | None = None) -> np.ndarray:
        masks = game.all_masks() if masks is None else np.asarray(masks)
        device = self.model.get_input_embeddings().weight.device
        ids = torch.tensor([game.input_ids], device=device)
        base = self.model.get_input_embeddings()(ids)[0]
        length = len(game.input_ids)
        batch = max(1, self.max_batch_tokens // length)
        out = np.empty(len(masks), dtype=np.float64)
        bar = self.progress(total=len(masks), desc="masked prompts") if self.progress else None
        for start in range(0, len(masks), batch):
            chunk = masks[start : start + batch]
            embeds = mask_to_embeddings(base, game.spans, chunk, self.baseline.to(base.dtype))
            logits = self.model(inputs_embeds=embeds, use_cache=False, logits_to_keep=1).logits[:, -1]
            out[start : start + len(chunk)] = log_odds(logits, game.target_id).double().cpu().numpy()
            self.tokens_computed += len(chunk) * length
            if bar:
                bar.update(len(chunk))
        if bar:
            bar.close()
        return check_finite(out)

    def values_batch(self, games, names: Sequence[str] | None = None) -> list[np.ndarray]:
        """Several samples, one after another (the reference path); ``names`` label errors."""
        names = names or [f"game {i}" for i in range(len(games))]
        out = []
        for game, name in zip(games, names):
            try:
                out.append(self.values(game))
            except SftscopeError as exc:
                raise SftscopeError(f"{exc} ({name})") from exc
        return out
