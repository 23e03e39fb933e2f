"""Where to stop: stopping rules as pure functions over a run's tables (losses, quality, interaction flows).

Used by the offline analysis (``summary.py``) and by the live ``InteractionMonitor``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from typing import Callable, Literal

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
    """The checkpoint step that ends the denoising stage (the paper's proposed stopping point).

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


# --------------------------------------------------------------------------- stopping rules


@dataclass(frozen=True)
class Decision:
    """A rule's answer: the checkpoint to keep, and the checkpoint at which the rule commits to it.

    ``decided_at`` is where training could have stopped (the compute spent);
    ``fired`` is False when the rule never triggered and fell back at the end.
    """

    step: int
    decided_at: int
    fired: bool = True


@dataclass
class Signals:
    """What a rule may look at, checkpoint by checkpoint: never the split its quality is judged on.

    ``eval_loss``: loss on the eval split at each checkpoint (step -> value);
    ``flows``: interaction flows per interval (``dynamics.interval_flows``);
    ``probe_utility``: mean cross-entropy of the target from the salient
    interactions of the eval-split probes (Eq. 11 over Omega_t);
    ``emerged_rho``: uncancelled ratio of the interactions newly emerged in the
    interval ending at each step (mean over probes);
    ``eval_accuracy``: accuracy on the eval split (closed label sets).
    """

    steps: list[int]
    eval_loss: pd.Series
    flows: pd.DataFrame | None = None
    probe_utility: pd.Series | None = None
    emerged_rho: pd.Series | None = None
    eval_accuracy: pd.Series | None = None


def patience_pick(values: pd.Series, patience: int, *, first_step: int = 1) -> Decision | None:
    """What ``transformers.EarlyStoppingCallback`` (threshold 0, lower is better) keeps on these evaluations.

    Each evaluation that is not strictly better than the best so far adds one to
    a counter (a better one resets it); training stops when the counter reaches
    ``patience`` and the best checkpoint seen is kept. Only evaluations made
    during training count (``first_step=1``): the callback never sees the
    evaluation before the first step. ``None`` when it never stops.
    """
    best_step, best, counter = None, float("inf"), 0
    for step, value in values[values.index >= first_step].sort_index().items():
        if value < best:  # NaN is never an improvement
            best_step, best, counter = int(step), float(value), 0
        else:
            counter += 1
            if counter >= patience:
                return Decision(best_step, int(step))
    return None


def _fallback_best(values: pd.Series, steps: list[int], first_step: int = 1) -> Decision:
    """The end of training: the best checkpoint seen (as ``load_best_model_at_end`` keeps it)."""
    seen = values[(values.index >= first_step) & values.notna()]
    step = int(seen.idxmin()) if len(seen) else steps[-1]
    return Decision(step, steps[-1], fired=False)


def rule_eval_loss(patience: int):
    def pick(signals: Signals) -> Decision:
        found = patience_pick(signals.eval_loss, patience)
        return found or _fallback_best(signals.eval_loss, signals.steps)
    return pick


def rule_eval_accuracy(patience: int):
    """Early stopping on eval-split accuracy (higher is better), the best checkpoint kept."""
    def pick(signals: Signals) -> Decision:
        if signals.eval_accuracy is None or signals.eval_accuracy.isna().all():
            return rule_eval_loss(patience)(signals)  # open-ended responses: no accuracy, use the loss
        found = patience_pick(-signals.eval_accuracy, patience)
        return found or _fallback_best(-signals.eval_accuracy, signals.steps)
    return pick


def rule_last(signals: Signals) -> Decision:
    """No early stopping: never fires; what it keeps is the last checkpoint."""
    return Decision(signals.steps[-1], signals.steps[-1], fired=False)


def rule_cumulative(fraction: float):
    """The stage boundary by cumulative removals: needs the final removal count, so it decides at the end."""
    def pick(signals: Signals) -> Decision:
        return Decision(stage_boundary(signals.flows, StageRule("cumulative", fraction)), signals.steps[-1])
    return pick


def rule_crossover(signals: Signals) -> Decision:
    """The stage boundary where emergence first outpaces removal; decided at the end of that interval."""
    flows = signals.flows.sort_values("step").reset_index(drop=True)
    found = detect_boundary(flows, StageRule("crossover"))
    if found is None:
        return Decision(signals.steps[-1], signals.steps[-1], fired=False)
    decided = int(flows.loc[flows["step_from"] == found, "step"].iloc[0])
    return Decision(found, decided)


def rule_cumulative_live(fraction: float, patience: int = 1):
    """The boundary as a live monitor sees it: recomputed on the removals so far, kept once it holds still.

    Fires at the first checkpoint where the boundary has stayed the same for
    ``patience`` more checkpoints and ``patience`` checkpoints lie after it.
    """
    def pick(signals: Signals) -> Decision:
        history: list[int] = []
        for step in signals.steps[1:]:
            flows = signals.flows[signals.flows["step"] <= step]
            if flows.empty:  # an evaluation before the first interval of interaction checkpoints
                continue
            history.append(stage_boundary(flows, StageRule("cumulative", fraction)))
            recent = history[-(patience + 1):]
            after = [s for s in signals.steps if recent[-1] < s <= step]
            if len(recent) == patience + 1 and len(set(recent)) == 1 and len(after) >= patience:
                return Decision(recent[-1], step)
        return Decision(signals.steps[-1], signals.steps[-1], fired=False)
    return pick


def rule_emergence_rho(threshold: float):
    """Stop when the newly emerged interactions of an interval turn mutually cancelling (rho below a threshold).

    The paper's late, overfitted interactions are noise-like: rho near 0. Keeps
    the checkpoint before that interval.
    """
    def pick(signals: Signals) -> Decision:
        if signals.emerged_rho is None:
            return Decision(signals.steps[-1], signals.steps[-1], fired=False)
        rho = signals.emerged_rho.sort_index()
        previous = {s: p for p, s in zip(signals.steps, signals.steps[1:])}
        for step, value in rho.items():
            if step in previous and value < threshold:
                return Decision(previous[step], int(step))
        return Decision(signals.steps[-1], signals.steps[-1], fired=False)
    return pick


def rule_probe_utility(patience: int):
    """Early stopping on the interactions' own prediction of the eval-split probes (Eq. 11 over Omega_t)."""
    def pick(signals: Signals) -> Decision:
        if signals.probe_utility is None or signals.probe_utility.empty:
            return Decision(signals.steps[-1], signals.steps[-1], fired=False)
        found = patience_pick(signals.probe_utility, patience)
        return found or _fallback_best(signals.probe_utility, signals.steps)
    return pick


def rule_boundary_then_eval_loss(fraction: float, patience: int = 2, boundary_patience: int = 1):
    """Never before the (live) end of the denoising stage; from there on, eval-loss early stopping."""
    live = rule_cumulative_live(fraction, boundary_patience)

    def pick(signals: Signals) -> Decision:
        boundary = live(signals)
        floor = max(1, boundary.step) if boundary.fired else 1
        found = patience_pick(signals.eval_loss, patience, first_step=floor)
        if found is not None and boundary.fired and found.decided_at < boundary.decided_at:
            found = Decision(found.step, boundary.decided_at)  # the floor was only known then
        return found or _fallback_best(signals.eval_loss, signals.steps, floor)
    return pick


@dataclass(frozen=True)
class Rule:
    name: str
    kind: str  # "interaction", "eval loss", "reference" or "oracle"
    pick: Callable[[Signals], Decision]
    live: bool  # can decide during training (InteractionMonitor)
    describe: str


def standard_rules(*, fraction: float = 0.9, rho_threshold: float = 0.3, utility_patience: int = 2,
                   boundary_patience: int = 1) -> dict[str, Rule]:
    """Every rule the tool offers, by name (thresholds as given; ``benchmarks/stopping.py`` chooses them)."""
    rules = [
        Rule("cumulative", "interaction", rule_cumulative(fraction), False,
             f"end of the denoising stage: removals reach {fraction:.0%} of their final count"),
        Rule("crossover", "interaction", rule_crossover, True,
             "end of the denoising stage: emergence first outpaces removal"),
        Rule("cumulative_live", "interaction", rule_cumulative_live(fraction, boundary_patience), True,
             f"the cumulative boundary computed live, once it holds for {boundary_patience} more checkpoint(s)"),
        Rule("emergence_rho", "interaction", rule_emergence_rho(rho_threshold), True,
             f"newly emerged interactions turn cancelling (rho < {rho_threshold})"),
        Rule("probe_utility_patience", "interaction", rule_probe_utility(utility_patience), True,
             f"early stopping (patience {utility_patience}) on the interactions' cross-entropy on eval probes"),
        Rule("boundary_then_eval_loss", "interaction + eval loss", rule_boundary_then_eval_loss(fraction, 2, boundary_patience), True,
             "eval-loss early stopping (patience 2), never before the live end of the denoising stage"),
        Rule("eval_loss_patience_1", "eval loss", rule_eval_loss(1), True,
             "transformers.EarlyStoppingCallback, patience 1, threshold 0, best checkpoint kept"),
        Rule("eval_loss_patience_2", "eval loss", rule_eval_loss(2), True,
             "transformers.EarlyStoppingCallback, patience 2, threshold 0, best checkpoint kept"),
        Rule("eval_accuracy_patience_2", "eval accuracy", rule_eval_accuracy(2), True,
             "early stopping (patience 2) on eval-split accuracy, best checkpoint kept"),
        Rule("last", "reference", rule_last, True, "no early stopping: the last checkpoint"),
    ]
    return {rule.name: rule for rule in rules}


# The rule with the lowest mean accuracy regret on the held-out half of benchmarks/stopping.py (see BENCHMARKS.md);
# tests/test_stopping.py checks it against the benchmark's record below.
DEFAULT_RULE = "last"
ORACLE = "best_test_accuracy"
BENCHMARK_RECORD = "stopping_benchmark.json"  # written by benchmarks/stopping.py, shipped with the package


def benchmark_record() -> dict | None:
    """The stopping benchmark's measured result per rule (mean regret on held-out runs), or None if not shipped."""
    path = resources.files("sftscope").joinpath(BENCHMARK_RECORD)
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def rule_table(signals: Signals, quality: pd.DataFrame, rules: dict[str, Rule]) -> dict[str, dict]:
    """Every rule's pick with its measured quality, plus the oracle (the best test accuracy, ties: earliest).

    ``quality`` has one row per step with ``accuracy`` (may be NaN) and ``test_loss``.
    """
    last = signals.steps[-1]
    by_step = quality.set_index("step")

    def row(name: str, kind: str, decision: Decision, describe: str) -> dict:
        at = by_step.loc[decision.step] if decision.step in by_step.index else None
        value = lambda col: None if at is None or pd.isna(at.get(col)) else float(at[col])  # noqa: E731
        return {"step": decision.step, "accuracy": value("accuracy"), "test_loss": value("test_loss"),
                "compute_fraction": round(decision.decided_at / last, 4) if last else 1.0,
                "decided_at": decision.decided_at, "fired": decision.fired, "kind": kind, "rule": describe}

    out = {name: row(name, rule.kind, rule.pick(signals), rule.describe) for name, rule in rules.items()}
    accuracy = by_step["accuracy"].dropna() if "accuracy" in by_step else pd.Series(dtype=float)
    if len(accuracy):
        best = int(accuracy[accuracy == accuracy.max()].index.min())
        out[ORACLE] = row(ORACLE, "oracle", Decision(best, last), "oracle: the checkpoint with the best test accuracy "
                          "(known only after scoring every checkpoint on the test split)")
    return out
