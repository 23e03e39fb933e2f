"""Where to stop: stopping rules as pure functions over a run's tables, the same offline and live.

Every rule is defined by what it does *during* training: ``check`` looks at
the signals seen so far and either says "stop now, keep checkpoint k" or
nothing; ``final`` says what it keeps when training ran to the end. The
offline pick (``Rule.pick``) replays the run checkpoint by checkpoint through
``check``, so it is by construction what the live ``InteractionMonitor``
decides step by step (``tests/test_stopping.py`` replays the monitor itself).

Rules see only the training run and its validation split (``Signals`` has no
field for the test split); the rule table adds each pick's test numbers for
the report.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, replace
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

    With no boundary (no removal at all, or no crossing yet) the last checkpoint:
    the whole run is one stage.
    """
    if flows is None or flows.empty:
        raise SftscopeError("need at least two checkpoints to find a stage boundary")
    found = detect_boundary(flows, rule)
    return int(flows["step"].max()) if found is None else found


def detect_boundary(flows: pd.DataFrame, rule: StageRule = StageRule()) -> int | None:
    """Like ``stage_boundary``, but ``None`` while the rule has not fired (and for a run with no removal)."""
    if flows is None or flows.empty:
        return None
    flows = flows.sort_values("step").reset_index(drop=True)
    if rule.kind == "cumulative":
        cumulative = flows["removed"].cumsum()
        final = cumulative.iloc[-1]
        if final == 0:
            return None  # nothing removed: there is no denoising stage (docs/findings.md)
        hit = flows.index[cumulative >= rule.fraction * final][0]
        return int(flows["step"].iloc[hit])
    if rule.kind != "crossover":
        raise SftscopeError(f"unknown stage rule {rule.kind!r}: use crossover or cumulative")
    width = (flows["step"] - flows["step_from"]).clip(lower=1)
    removal_rate = flows["removed"] / width
    emergence_rate = flows["emerged"] / width
    removed_so_far = flows["removed"].cumsum()
    for i in range(len(flows)):
        if removed_so_far.iloc[i] == 0:
            continue  # nothing removed yet: no denoising stage has begun, so none can end here
        if removal_rate.iloc[i] < emergence_rate.iloc[i]:
            return int(flows["step_from"].iloc[i])  # the interval starting here is dominated by emergence
    return None


# --------------------------------------------------------------------------- what rules see


@dataclass(frozen=True)
class Decision:
    """A rule's answer: the checkpoint to keep, and the checkpoint at which the rule commits to it.

    ``decided_at`` is where training could have stopped (the compute spent);
    ``fired`` is False when the rule never stopped training and kept its ``final`` choice.
    """

    step: int
    decided_at: int
    fired: bool = True


@dataclass(frozen=True)
class Signals:
    """What a rule may look at, checkpoint by checkpoint: the training run and its validation split, nothing else.

    ``steps``: every checkpoint (and evaluation) step, in order;
    ``eval_loss``: validation loss at each evaluated step (NaN where the loss was NaN);
    ``flows``: interaction flows of the task probes per interval (``dynamics.interval_flows``);
    ``probe_utility``: mean cross-entropy of the target from the salient
    interactions of the validation probes (Eq. 11 over Omega_t);
    ``emerged_rho``: uncancelled ratio of the interactions newly emerged in the
    interval ending at each step (mean over probes);
    ``eval_accuracy``: validation accuracy (closed label sets);
    ``drift``: per step, ``knowledge_drop`` and ``format_drift`` on the general data (not the task's).
    """

    steps: list[int]
    eval_loss: pd.Series
    flows: pd.DataFrame | None = None
    probe_utility: pd.Series | None = None
    emerged_rho: pd.Series | None = None
    eval_accuracy: pd.Series | None = None
    drift: pd.DataFrame | None = None

    def upto(self, step: int) -> Signals:
        """What was known at ``step``: every signal cut after it."""
        cut = lambda series: None if series is None else series[series.index <= step]  # noqa: E731
        return replace(self, steps=[s for s in self.steps if s <= step], eval_loss=cut(self.eval_loss),
                       flows=None if self.flows is None else self.flows[self.flows["step"] <= step],
                       probe_utility=cut(self.probe_utility), emerged_rho=cut(self.emerged_rho),
                       eval_accuracy=cut(self.eval_accuracy),
                       drift=None if self.drift is None else self.drift[self.drift.index <= step])


def _present(series: pd.Series | None) -> bool:
    return series is not None and series.notna().any()


# --------------------------------------------------------------------------- transformers' early stopping


@dataclass(frozen=True)
class Patience:
    """``transformers.EarlyStoppingCallback`` (threshold 0) with ``load_best_model_at_end``, evaluation by evaluation.

    The callback compares each evaluation with the best one *before* it (None
    at the first: no count), then the Trainer updates the best, starting from
    +inf (lower is better) or -inf: a NaN is never an improvement, and a NaN at
    the first evaluation leaves the best at infinity. ``stopped``: the
    evaluation at which the counter reached ``patience``; ``best``: the best
    evaluation's step (ties: the earlier), None when none improved on infinity.
    """

    stopped: int | None
    best: int | None


def early_stopping(values: pd.Series, patience: int | None, *, greater: bool = False, first_step: int = 1) -> Patience:
    """Replays transformers' early stopping over ``values`` (step -> metric); ``patience=None`` never stops.

    Only evaluations made during training count (``first_step=1``): the
    callback never sees the evaluation before the first step.
    """
    better = (lambda a, b: a > b) if greater else (lambda a, b: a < b)  # False for NaN either way
    best_metric, best_step, counter = None, None, 0
    for step, value in values[values.index >= first_step].sort_index().items():
        value = float(value)
        if best_metric is None or (better(value, best_metric) and abs(value - best_metric) > 0):
            counter = 0
        else:
            counter += 1
        if best_metric is None:
            best_metric = -math.inf if greater else math.inf
        if better(value, best_metric):
            best_metric, best_step = value, int(step)
        if patience is not None and counter >= patience:
            return Patience(int(step), best_step)
    return Patience(None, best_step)


def patience_pick(values: pd.Series, patience: int, *, first_step: int = 1, greater: bool = False) -> Decision | None:
    """What ``EarlyStoppingCallback`` keeps when it stops (``None`` when it never does).

    The kept checkpoint is the best one; with none better than infinity (NaN
    losses only), the model training stopped with.
    """
    found = early_stopping(values, patience, greater=greater, first_step=first_step)
    if found.stopped is None:
        return None
    return Decision(found.stopped if found.best is None else found.best, found.stopped)


def best_at_end(values: pd.Series, signals: Signals, *, greater: bool = False, first_step: int = 1) -> int:
    """``load_best_model_at_end=True``: the best evaluation of the whole run; none: the last checkpoint."""
    best = early_stopping(values, None, greater=greater, first_step=first_step).best
    return signals.steps[-1] if best is None else best


# --------------------------------------------------------------------------- rules


Check = Callable[[Signals], "Decision | None"]


@dataclass(frozen=True)
class Rule:
    name: str
    kind: str  # "interaction", "eval loss", "eval accuracy", "drift", "reference" or "oracle"
    check: Check | None  # during training: stop now (and keep what)? None: the rule never stops training
    final: Callable[[Signals], int]  # what it keeps when training ran to the end
    describe: str
    needs: tuple[str, ...] = ()  # the signals it reads; without them it does not apply
    live: bool = True  # the monitor can run it (it computes every signal the rule needs)

    def applies(self, signals: Signals) -> bool:
        def has(need: str) -> bool:
            value = getattr(signals, need)
            if isinstance(value, pd.DataFrame):
                return not value.empty
            if need == "eval_loss":  # a NaN loss is an evaluation too (a diverged run), unlike a missing accuracy
                return value is not None and len(value) > 0
            return _present(value)

        return all(has(need) for need in self.needs)

    def pick(self, signals: Signals) -> Decision:
        """The run replayed checkpoint by checkpoint: the first step at which ``check`` stops, else ``final``."""
        if not self.applies(signals):
            raise SftscopeError(f"rule {self.name} needs {', '.join(self.needs)}, which this run does not have")
        if self.check is not None:
            for step in signals.steps:
                decision = self.check(signals.upto(step))
                if decision is not None:
                    return Decision(decision.step, step)
        return Decision(self.final(signals), signals.steps[-1], fired=False)


def _last(signals: Signals) -> int:
    return signals.steps[-1]


def patience_rule(series: str, patience: int, *, greater: bool = False) -> tuple[Check, Callable[[Signals], int]]:
    """Early stopping on one signal: stop when transformers would, else keep the best at the end."""
    def check(signals: Signals) -> Decision | None:
        values = getattr(signals, series)
        return None if values is None else patience_pick(values, patience, greater=greater)

    def final(signals: Signals) -> int:
        values = getattr(signals, series)
        return signals.steps[-1] if values is None else best_at_end(values, signals, greater=greater)

    return check, final


def live_boundary(signals: Signals, fraction: float, patience: int) -> Decision | None:
    """The cumulative boundary as a live monitor sees it, once it has held still: (boundary, step it was known).

    Recomputed at every checkpoint with interaction data (evaluation-only
    steps bring none and do not count), on the removals so far; it holds when
    it is the same at ``patience + 1`` consecutive such checkpoints with
    ``patience`` of them after it. A run with no removal so far has none.
    """
    if signals.flows is None or signals.flows.empty:
        return None
    flows = signals.flows.sort_values("step")
    interaction_steps = [int(s) for s in flows["step"]]
    history: list[int | None] = []
    for step in interaction_steps:
        history.append(detect_boundary(flows[flows["step"] <= step], StageRule("cumulative", fraction)))
        recent = history[-(patience + 1):]
        if len(recent) == patience + 1 and recent[-1] is not None and len(set(recent)) == 1:
            after = [s for s in interaction_steps if recent[-1] < s <= step]
            if len(after) >= patience:
                return Decision(recent[-1], step)
    return None


def standard_rules(*, fraction: float = 0.9, rho_threshold: float = 0.3, utility_patience: int = 2,
                   boundary_patience: int = 1, max_knowledge_drop: float = 0.05,
                   max_format_drift: float = 0.10) -> dict[str, Rule]:
    """Every rule the tool offers, by name (thresholds as given; ``benchmarks/stopping.py`` chooses them)."""

    def cumulative_final(signals: Signals) -> int:
        found = detect_boundary(signals.flows, StageRule("cumulative", fraction))
        return signals.steps[-1] if found is None else found

    def crossover_check(signals: Signals) -> Decision | None:
        found = detect_boundary(signals.flows, StageRule("crossover"))
        if found is None:
            return None
        return Decision(found, int(signals.flows.loc[signals.flows["step_from"] == found, "step"].iloc[0]))

    def cumulative_live_check(signals: Signals) -> Decision | None:
        return live_boundary(signals, fraction, boundary_patience)

    def rho_check(signals: Signals) -> Decision | None:
        if signals.flows is None:
            return None
        for row in signals.flows.sort_values("step").itertuples():
            if row.emerged_rho < rho_threshold:  # NaN (nothing emerged) never fires
                return Decision(int(row.step_from), int(row.step))
        return None

    def boundary_floor(signals: Signals) -> Decision | None:
        return live_boundary(signals, fraction, boundary_patience)

    def boundary_then_check(signals: Signals) -> Decision | None:
        boundary = boundary_floor(signals)
        if boundary is None:  # the denoising stage has not (visibly) ended: never stop before it
            return None
        found = patience_pick(signals.eval_loss, 2, first_step=max(1, boundary.step))
        return None if found is None else Decision(found.step, max(found.decided_at, boundary.decided_at))

    def boundary_then_final(signals: Signals) -> int:
        boundary = boundary_floor(signals)
        if boundary is None:
            return signals.steps[-1]
        return best_at_end(signals.eval_loss, signals, first_step=max(1, boundary.step))

    def within_drift_final(signals: Signals) -> int:
        drift = signals.drift
        fits = drift[(drift["knowledge_drop"] <= max_knowledge_drop + 1e-12)
                     & (drift["format_drift"].fillna(0) <= max_format_drift + 1e-12)].index
        accuracy = signals.eval_accuracy[signals.eval_accuracy.index.isin(fits)].dropna()
        if accuracy.empty:
            return int(min(drift.index))  # nothing else fits: the model before SFT has no drift
        return int(accuracy[accuracy == accuracy.max()].index.min())

    loss_1, loss_1_final = patience_rule("eval_loss", 1)
    loss_2, loss_2_final = patience_rule("eval_loss", 2)
    acc_2, acc_2_final = patience_rule("eval_accuracy", 2, greater=True)
    util, util_final = patience_rule("probe_utility", utility_patience)
    rules = [
        Rule("cumulative", "interaction", None, cumulative_final,
             f"end of the denoising stage: removals reach {fraction:.0%} of their final count", ("flows",), live=False),
        Rule("crossover", "interaction", crossover_check, _last,
             "end of the denoising stage: emergence first outpaces removal", ("flows",)),
        Rule("cumulative_live", "interaction", cumulative_live_check, _last,
             f"the cumulative boundary computed live, once it holds for {boundary_patience} more checkpoint(s)",
             ("flows",)),
        Rule("emergence_rho", "interaction", rho_check, _last,
             f"newly emerged interactions turn cancelling (rho < {rho_threshold})", ("flows",)),
        Rule("probe_utility_patience", "interaction", util, util_final,
             f"early stopping (patience {utility_patience}) on the interactions' cross-entropy on validation probes",
             ("probe_utility",)),
        Rule("boundary_then_eval_loss", "interaction + eval loss", boundary_then_check, boundary_then_final,
             "eval-loss early stopping (patience 2), never before the live end of the denoising stage",
             ("flows", "eval_loss")),
        Rule("eval_loss_patience_1", "eval loss", loss_1, loss_1_final,
             "transformers.EarlyStoppingCallback on validation loss, patience 1, best checkpoint kept", ("eval_loss",)),
        Rule("eval_loss_patience_2", "eval loss", loss_2, loss_2_final,
             "transformers.EarlyStoppingCallback on validation loss, patience 2, best checkpoint kept", ("eval_loss",)),
        Rule("eval_accuracy_patience_2", "eval accuracy", acc_2, acc_2_final,
             "early stopping (patience 2) on validation accuracy, best checkpoint kept", ("eval_accuracy",)),
        Rule("best_eval_loss", "eval loss", None, loss_1_final,
             "train to the end, keep the lowest validation loss (load_best_model_at_end)", ("eval_loss",)),
        Rule("best_eval_accuracy", "eval accuracy", None, acc_2_final,
             "train to the end, keep the best validation accuracy (load_best_model_at_end)", ("eval_accuracy",)),
        Rule("best_within_drift", "eval accuracy + drift", None, within_drift_final,
             f"the best validation accuracy among checkpoints (the model before SFT included) that lose at most "
             f"{100 * max_knowledge_drop:.0f} knowledge points and answer at most {100 * max_format_drift:.0f}% more "
             "general prompts with a task label", ("eval_accuracy", "drift"), live=False),
        Rule("last", "reference", None, _last, "no early stopping: the last checkpoint"),
    ]
    return {rule.name: rule for rule in rules}


def labels_needed(rule: str) -> bool:
    """Whether a rule decides on validation accuracy (so it needs a closed label set)."""
    return "eval_accuracy" in standard_rules()[rule].needs

# The rule chosen by benchmarks/stopping.py (see BENCHMARKS.md and the record below);
# tests/test_stopping.py checks it against the benchmark's record.
DEFAULT_RULE = "last"
ORACLE = "best_test_accuracy"
BENCHMARK_RECORD = "stopping_benchmark.json"  # written by benchmarks/stopping.py, shipped with the package


def benchmark_record() -> dict | None:
    """The stopping benchmark's measured result per rule (mean regret on held-out runs), or None if not shipped."""
    path = resources.files("sftscope").joinpath(BENCHMARK_RECORD)
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


DRIFT_COLUMNS = ("kl", "knowledge_change", "label_share", "agreement")


def rule_table(signals: Signals, quality: pd.DataFrame, rules: dict[str, Rule],
               drift: pd.DataFrame | None = None) -> dict[str, dict]:
    """Every rule's pick with its measured test quality and drift, plus the oracle (best test accuracy, ties: earliest).

    ``quality`` has one row per step with test ``accuracy`` (may be NaN) and
    ``test_loss``, and the validation numbers; ``drift`` one row per step
    (index) with ``DRIFT_COLUMNS``. A rule that does not apply to this run
    (accuracy rules on open-ended responses, drift rules without drift) gets a
    row with ``step`` None and the reason.
    """
    last = signals.steps[-1]
    by_step = quality.set_index("step")

    def value(frame, step, column):
        if frame is None or step not in frame.index or column not in frame or pd.isna(frame.loc[step, column]):
            return None
        return float(frame.loc[step, column])

    def row(name: str, kind: str, decision: Decision | None, describe: str, why: str | None = None) -> dict:
        step = None if decision is None else decision.step
        out = {"step": step, "accuracy": value(by_step, step, "accuracy"), "test_loss": value(by_step, step, "test_loss"),
               "validation_accuracy": value(by_step, step, "validation_accuracy"),
               "validation_loss": value(by_step, step, "validation_loss"),
               "compute_fraction": None if decision is None else (round(decision.decided_at / last, 4) if last else 1.0),
               "decided_at": None if decision is None else decision.decided_at,
               "fired": None if decision is None else decision.fired, "kind": kind, "rule": describe}
        out.update({column: value(drift, step, column) for column in DRIFT_COLUMNS})
        if why:
            out["not_applicable"] = why
        return out

    out = {}
    for name, rule in rules.items():
        if rule.applies(signals):
            out[name] = row(name, rule.kind, rule.pick(signals), rule.describe)
        else:
            out[name] = row(name, rule.kind, None, rule.describe, f"needs {', '.join(rule.needs)}, which this run has not")
    accuracy = by_step["accuracy"].dropna() if "accuracy" in by_step else pd.Series(dtype=float)
    if len(accuracy):
        best = int(accuracy[accuracy == accuracy.max()].index.min())
        out[ORACLE] = row(ORACLE, "oracle", Decision(best, last), "oracle: the checkpoint with the best test accuracy "
                          "(known only after scoring every checkpoint on the test split, which no rule sees)")
    return out
