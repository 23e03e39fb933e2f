"""Where to stop: stopping rules as pure functions over a run's tables (losses, quality, interaction flows).

Used by the offline analysis (``summary.py``) and by the live ``InteractionMonitor``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import pandas as pd

from .errors import SftscopeError


@dataclass(frozen=True)
class StageRule:
    """When the denoising stage ends.

    ``cumulative`` (default): the first checkpoint where cumulative removals
    reach ``fraction`` of their final count: removal has saturated.
    ``crossover``: the first checkpoint after which the removal rate (removed
    per step over the next interval) falls below the emergence rate. It fires
    at the first active interval when emergences outnumber removals from the
    start, as on our embedded demo, which is why it is not the default.
    """

    kind: Literal["crossover", "cumulative"] = "cumulative"
    fraction: float = 0.9


def stage_boundary(flows: pd.DataFrame, rule: StageRule = StageRule()) -> int:
    """The checkpoint step that ends the denoising stage (the recommended stopping point).

    Under ``crossover`` with no crossing yet, the last checkpoint: denoising has not ended.
    """
    found = detect_boundary(flows, rule)
    return int(flows["step"].max()) if found is None else found


def detect_boundary(flows: pd.DataFrame, rule: StageRule = StageRule()) -> int | None:
    """Like ``stage_boundary``, but ``None`` while the rule has not fired (for live monitoring)."""
    if flows.empty:
        raise SftscopeError("need at least two checkpoints to find a stage boundary")
    flows = flows.sort_values("step").reset_index(drop=True)
    if rule.kind == "cumulative":
        cumulative = flows["removed"].cumsum()
        final = cumulative.iloc[-1]
        if final == 0:
            return int(flows["step_from"].iloc[0])
        hit = flows.index[cumulative >= rule.fraction * final][0]
        return int(flows["step"].iloc[hit])
    if rule.kind != "crossover":
        raise SftscopeError(f"unknown stage rule {rule.kind!r}: use crossover or cumulative")
    width = (flows["step"] - flows["step_from"]).clip(lower=1)
    removal_rate = flows["removed"] / width
    emergence_rate = flows["emerged"] / width
    for i in range(len(flows)):
        if removal_rate.iloc[i] < emergence_rate.iloc[i]:
            return int(flows["step_from"].iloc[i])  # the interval starting here is dominated by emergence
    return None
