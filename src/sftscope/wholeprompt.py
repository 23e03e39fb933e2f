"""How much of the whole prompt a result explains: coverage and whole-prompt fidelity (docs/method.md section 3b).

The AND-OR model is fitted on the ``2^n`` masks of the players; every other
word of the user content stays in place. Two checks look beyond that:

- **coverage**: the output change from masking all players, ``v(N) - v(0)``,
  against the change from masking every unit of the content (the players and
  each word outside them). Near 1: the players carry the prompt's effect; near
  0: it sits in the background.
- **whole-prompt R²**: on random masks over all units (each player, as one
  unit, and each word outside the players, present with probability 1/2), the
  model's output against the AND-OR model's prediction at the players' part
  of the mask. Words outside the players are masked at random too, so this
  scores what the fit leaves out.

Units are the players' token spans plus, for each content word outside them,
its tokens that no player holds (words sharing a token form one unit). With
phrase players, which cover every word, the units are the players: coverage is
1 and the random masks are masks of the players themselves.

The masked prompts are run in full (the rows share no trie), with the template
start before the first unit computed once per batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from .errors import SftscopeError
from .game import check_finite, log_odds
from .quality import cache_argument, output_cache, sliding_window

DEFAULT_MASKS = 256


@dataclass(frozen=True)
class WholePrompt:
    """The two checks of one result; ``r2`` is NaN when the random masks' outputs do not vary."""

    players_effect: float  # v(N) - v(players masked), the rest in place
    content_effect: float  # v(N) - v(every unit masked)
    r2: float
    masks: int  # random masks scored
    units: int  # players + words outside them

    @property
    def coverage(self) -> float:
        """``players_effect / content_effect`` (NaN when masking the whole content changes nothing)."""
        return self.players_effect / self.content_effect if self.content_effect else float("nan")

    def as_row(self) -> dict[str, float]:
        return {"players_effect": self.players_effect, "content_effect": self.content_effect,
                "coverage": self.coverage, "whole_r2": self.r2, "whole_masks": self.masks, "units": self.units}


def content_units(words, player_spans: Sequence[tuple[int, int]]) -> list[tuple[int, ...]]:
    """Token positions of every unit: the players first (in order), then each group of content words outside them."""
    held = {k for start, end in player_spans for k in range(start, end)}
    units: list[tuple[int, ...]] = [tuple(range(start, end)) for start, end in player_spans]
    background: list[list[int]] = []
    for word in words:
        free = [k for k in range(*word.token_span) if k not in held]
        if not free:
            continue
        if background and background[-1][-1] >= free[0]:  # a token shared with the previous word: one unit
            background[-1].extend(k for k in free if k > background[-1][-1])
        else:
            background.append(free)
    return units + [tuple(u) for u in background]


def random_masks(n_units: int, count: int, seed: int) -> np.ndarray:
    """``count`` masks over the units (True: present), each unit present with probability 1/2, seeded."""
    return np.random.default_rng(seed).random((count, n_units)) < 0.5


def player_index(present: np.ndarray, n_players: int) -> np.ndarray:
    """The players' part of each mask as a game bitmask (player ``i`` is bit ``i``)."""
    weights = 1 << np.arange(n_players, dtype=np.int64)
    return present[:, :n_players].astype(np.int64) @ weights


@torch.no_grad()
def unit_values(model, baseline: torch.Tensor, input_ids: Sequence[int], units: Sequence[Sequence[int]],
                present: np.ndarray, target_id: int, *, max_batch_tokens: int = 16_384) -> np.ndarray:
    """``v(T)`` for each row of ``present`` (``[M, len(units)]``): absent units' tokens take the baseline embedding.

    The tokens before the first unit are the same in every row: their cache is
    computed once per batch (not on a sliding-window model whose window the prompt outgrows).
    """
    embed = model.get_input_embeddings()
    device = embed.weight.device
    ids = torch.tensor([list(input_ids)], device=device)
    base = embed(ids)[0]
    fill = baseline.to(device=device, dtype=base.dtype)
    length = len(input_ids)
    start = min((min(u) for u in units if u), default=0)
    window = sliding_window(model)
    if window is not None and length >= window:
        start = 0
    present = np.asarray(present, dtype=bool)
    rows = max(1, max_batch_tokens // max(1, length - start))
    out = np.empty(len(present), dtype=np.float64)
    for first in range(0, len(present), rows):
        chunk = present[first : first + rows]
        embeds = base[start:].unsqueeze(0).repeat(len(chunk), 1, 1)
        for u, tokens in enumerate(units):
            absent = torch.as_tensor(~chunk[:, u], device=device)
            if absent.any():
                positions = torch.tensor([k - start for k in tokens], device=device)
                embeds[absent.nonzero()[:, 0][:, None], positions[None]] = fill
        extra = {}
        if start:
            head = model(inputs_embeds=base[None, :start], use_cache=True, logits_to_keep=1)
            cache = output_cache(head)
            cache.batch_repeat_interleave(len(chunk))
            extra = {cache_argument(model): cache,
                     "position_ids": torch.arange(start, length, device=device)[None].expand(len(chunk), -1)}
        logits = model(inputs_embeds=embeds, use_cache=bool(start), logits_to_keep=1, **extra).logits[:, -1]
        out[first : first + len(chunk)] = log_odds(logits, target_id).double().cpu().numpy()
    return check_finite(out, "whole-prompt masks")


def r_squared(observed: np.ndarray, predicted: np.ndarray) -> float:
    """``1 - SS_res / SS_tot``; NaN when ``observed`` is constant."""
    observed, predicted = np.asarray(observed, float), np.asarray(predicted, float)
    total = float(((observed - observed.mean()) ** 2).sum())
    if total <= 1e-12 * max(1.0, float((observed ** 2).sum())):
        return float("nan")
    return 1.0 - float(((observed - predicted) ** 2).sum()) / total


def whole_prompt(model, baseline: torch.Tensor, input_ids: Sequence[int], words, player_spans, target_id: int,
                 game_values: np.ndarray, fitted: np.ndarray, *, masks: int = DEFAULT_MASKS, seed: int = 0,
                 max_batch_tokens: int = 16_384) -> WholePrompt:
    """Coverage and whole-prompt R² of one result (``game_values``: its ``2^n`` values; ``fitted``: the AND-OR
    model's); ``masks=0`` skips R² (NaN), which costs ``masks`` forward passes for word players."""
    if masks < 0:
        raise SftscopeError(f"whole-prompt masks must be >= 0, got {masks}")
    n = len(player_spans)
    units = content_units(words, player_spans)
    present = np.vstack([np.zeros((1, len(units)), dtype=bool), random_masks(len(units), masks, seed)])
    if len(units) == n:  # every unit is a player (phrases): the game already holds each of these values
        values = np.asarray(game_values)[player_index(present, n)]
    else:
        values = unit_values(model, baseline, input_ids, units, present, target_id, max_batch_tokens=max_batch_tokens)
    full = float(game_values[-1])
    r2 = r_squared(values[1:], np.asarray(fitted)[player_index(present[1:], n)]) if masks else float("nan")
    return WholePrompt(players_effect=full - float(game_values[0]), content_effect=full - float(values[0]),
                       r2=r2, masks=masks, units=len(units))
