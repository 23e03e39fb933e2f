"""Stopping rules on constructed tables with known answers; the offline pick equals the live monitor's, step by step."""

import math
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from helpers import effects_frame
from sftscope.config import AnalysisSettings
from sftscope.dynamics import interval_flows, probe_utility
from sftscope.stopping import (
    DEFAULT_RULE, ORACLE, Decision, Signals, benchmark_record, early_stopping, patience_pick, rule_table,
    standard_rules,
)

STEPS = [0, 1, 2, 4, 8, 16, 32]
LOSS = pd.Series([3.6, 3.6, 2.0, 2.5, 1.5, 1.6, 1.7], index=STEPS)


def flows(removed, emerged, rho=None):
    steps = STEPS[1:]
    frame = pd.DataFrame({"step": steps, "step_from": STEPS[:-1], "removed": removed, "emerged": emerged})
    frame["emerged_rho"] = rho if rho is not None else [float("nan")] * len(steps)
    return frame


def signals(**kw):
    base = dict(steps=STEPS, eval_loss=LOSS, flows=flows([5, 3, 1, 0, 1, 0], [0, 1, 4, 8, 9, 12]))
    base.update(kw)
    return Signals(**base)


# --------------------------------------------------------------------------- transformers' early stopping


def test_patience_emulates_early_stopping_callback():
    # step 0 is never seen by the callback; 3.6 at step 1 is the first best; 2.0 at step 2 better;
    # patience 1: step 4 is worse -> stop at 4, keep 2
    assert patience_pick(LOSS, 1) == Decision(2, 4)
    # patience 2: 4 worse (1), 8 better (0), 16 worse (1), 32 worse (2) -> stop at 32, keep 8
    assert patience_pick(LOSS, 2) == Decision(8, 32)
    assert patience_pick(LOSS, 3) is None  # never stops
    flat = pd.Series([1.0, 1.0, 1.0], index=[1, 2, 4])
    assert patience_pick(flat, 2) == Decision(1, 4)  # equal is not better
    with_nan = pd.Series([2.0, float("nan"), 1.0], index=[1, 2, 4])
    assert patience_pick(with_nan, 1) == Decision(1, 2)


NAN = float("nan")
TRANSFORMERS_CASES = [  # (values by step, patience, greater is better)
    ({1: NAN, 2: 1.0, 4: 1.1}, 1, False),  # a NaN at the first evaluation: transformers stops at 4 and keeps 2
    ({1: NAN, 2: NAN, 4: NAN}, 1, False),  # all NaN: it stops, and keeps the model it has
    ({1: NAN, 2: NAN, 4: 0.5, 8: 0.6, 16: 0.55, 32: 0.58}, 2, True),  # accuracy NaN at 1 and 2: keeps 8, at 32
    ({1: 1.0, 2: 1.0, 4: 0.9, 8: 0.9, 16: 0.9}, 2, False),
]


def real_transformers(values: dict, patience: int, greater: bool):
    """transformers' own EarlyStoppingCallback and Trainer._determine_best_metric, evaluation by evaluation."""
    from transformers import EarlyStoppingCallback, Trainer, TrainerControl, TrainerState, TrainingArguments

    args = TrainingArguments(output_dir="unused", metric_for_best_model="metric", greater_is_better=greater,
                             eval_strategy="steps", save_strategy="steps", load_best_model_at_end=True, report_to="none")
    callback, state, control = EarlyStoppingCallback(patience), TrainerState(), TrainerControl()
    trainer = SimpleNamespace(args=args, state=state)
    for step, value in values.items():
        state.global_step = step
        metrics = {"eval_metric": value}
        callback.on_evaluate(args, state, control, metrics=metrics)
        Trainer._determine_best_metric(trainer, metrics, trial=None)
        if control.should_training_stop:
            return step, state.best_global_step
    return None, state.best_global_step


@pytest.mark.parametrize("values, patience, greater", TRANSFORMERS_CASES)
def test_nan_evaluations_are_handled_as_transformers_handles_them(values, patience, greater):
    stopped, best = real_transformers(values, patience, greater)
    ours = early_stopping(pd.Series(values), patience, greater=greater)
    assert (ours.stopped, ours.best) == (stopped, best)
    kept = patience_pick(pd.Series(values), patience, greater=greater)
    if stopped is not None:
        assert kept == Decision(best if best is not None else stopped, stopped)  # no best: the model it stopped with


def test_the_issues_nan_cases_keep_what_transformers_keeps():
    steps = [0, 1, 2, 4]
    loss = pd.Series([2.0, NAN, 1.0, 1.1], index=steps)
    rules = standard_rules()
    assert rules["eval_loss_patience_1"].pick(Signals(steps, loss)) == Decision(2, 4)
    assert rules["eval_loss_patience_1"].pick(Signals(steps, pd.Series([NAN] * 4, index=steps))) == Decision(2, 2)
    acc_steps = [0, 1, 2, 4, 8, 16, 32]
    accuracy = pd.Series([0.2, NAN, NAN, 0.5, 0.6, 0.55, 0.58], index=acc_steps)
    sig = Signals(acc_steps, pd.Series(1.0, index=acc_steps), eval_accuracy=accuracy)
    assert rules["eval_accuracy_patience_2"].pick(sig) == Decision(8, 32)


@pytest.mark.parametrize("patience", [1, 2, 3])
@pytest.mark.parametrize("seed", range(5))
def test_patience_equals_the_real_transformers_callback(patience, seed):
    values = np.round(np.random.default_rng(seed).uniform(1, 2, size=12), 1)  # rounding makes ties
    table = dict(zip(range(1, 13), map(float, values)))
    stopped, best = real_transformers(table, patience, False)
    ours = patience_pick(pd.Series(table), patience)
    assert ours == (None if stopped is None else Decision(best, stopped))
    if stopped is None:  # trained to the end: load_best_model_at_end keeps the best
        assert standard_rules()[f"eval_loss_patience_{min(patience, 2)}"].final(Signals(list(table), pd.Series(table))) \
            == (best if patience <= 2 else standard_rules()["best_eval_loss"].final(Signals(list(table), pd.Series(table))))


def test_best_rules_are_load_best_model_at_end():
    rules = standard_rules()
    acc = pd.Series([0.9, 0.2, 0.6, 0.6, 0.5, 0.4, 0.3], index=STEPS)  # step 0 never counts; ties: the earlier
    sig = signals(eval_accuracy=acc)
    assert rules["best_eval_loss"].pick(sig) == Decision(8, 32, fired=False)
    assert rules["best_eval_accuracy"].pick(sig) == Decision(2, 32, fired=False)


# --------------------------------------------------------------------------- the rules on constructed tables


def test_rule_table_reports_quality_drift_and_compute():
    quality = pd.DataFrame({"step": STEPS, "accuracy": [0.2, 0.2, 0.5, 0.4, 0.7, 0.7, 0.6],
                            "test_loss": LOSS.to_numpy(), "validation_accuracy": [0.1] * 7})
    drift = pd.DataFrame({"kl": [0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6], "knowledge_change": [0, 0, 0, -0.01, -0.02, -0.03, -0.05],
                          "label_share": [0.0] * 7, "agreement": [1.0] * 7}, index=STEPS)
    table = rule_table(signals(), quality, standard_rules(), drift)
    assert table["eval_loss_patience_1"] | {} == {**table["eval_loss_patience_1"], "step": 2, "decided_at": 4}
    assert table["eval_loss_patience_1"]["accuracy"] == 0.5 and table["eval_loss_patience_1"]["kl"] == 0.2
    assert table["eval_loss_patience_1"]["compute_fraction"] == pytest.approx(4 / 32)
    assert table["eval_loss_patience_2"]["step"] == 8 and table["eval_loss_patience_2"]["test_loss"] == 1.5
    assert table["last"] | {} == {**table["last"], "step": 32, "accuracy": 0.6, "compute_fraction": 1.0,
                                  "knowledge_change": -0.05}
    assert table[ORACLE]["step"] == 8 and table[ORACLE]["kind"] == "oracle"  # ties: the earliest best
    # cumulative: 9 of 10 removals by step 4 (fraction 0.9); it needs the final count: decided at the end
    assert table["cumulative"]["step"] == 4 and table["cumulative"]["compute_fraction"] == 1.0
    # crossover: emergence first outpaces removal in the interval (2, 4]: boundary 2, known at 4
    assert (table["crossover"]["step"], table["crossover"]["decided_at"]) == (2, 4)


def test_open_ended_runs_have_no_accuracy_no_oracle_and_no_accuracy_rules():
    quality = pd.DataFrame({"step": STEPS, "accuracy": [float("nan")] * 7, "test_loss": LOSS.to_numpy()})
    table = rule_table(signals(), quality, standard_rules())
    assert ORACLE not in table and table["last"]["accuracy"] is None
    # the accuracy rules do not fall back to the loss: they say they do not apply
    for name in ("eval_accuracy_patience_2", "best_eval_accuracy", "best_within_drift"):
        assert table[name]["step"] is None and "eval_accuracy" in table[name]["not_applicable"]


def test_live_boundary_waits_until_it_holds():
    # removals 5,3,1 then none: the cumulative boundary (0.9) moves 1, 2, 4, 4 ...
    rule = standard_rules(fraction=0.9, boundary_patience=1)["cumulative_live"]
    assert rule.pick(signals()) == Decision(4, 8)  # boundary 4 first seen at 4, held at 8 (one more checkpoint)
    # patience 2: boundaries 1, 2, 4, 4, 4 (the removal at 16 still leaves 9 of 10 by step 4) -> held at 16
    assert standard_rules(fraction=0.9, boundary_patience=2)["cumulative_live"].pick(signals()) == Decision(4, 16)
    # fraction 0.95: boundaries 1, 2, 4, 4, 16, 16 -> never the same three times in a row
    assert standard_rules(fraction=0.95, boundary_patience=2)["cumulative_live"].pick(signals()).fired is False


def test_an_evaluation_only_step_does_not_confirm_the_live_boundary():
    frame = pd.DataFrame({"step": [1, 2, 4, 8], "step_from": [0, 1, 2, 4], "removed": [5, 4, 0, 0],
                          "emerged": [0, 0, 1, 1], "emerged_rho": [NAN] * 4})
    steps = [0, 1, 2, 3, 4, 8]  # step 3: an evaluation, no interaction data
    sig = Signals(steps, pd.Series([3.0, 2.9, 2.8, 2.7, 2.6, 2.5], index=steps), frame)
    # boundary 1 at step 1, 2 at step 2, 2 at step 4: held at the next *interaction* checkpoint, 4 (not 3)
    assert standard_rules(boundary_patience=1)["cumulative_live"].pick(sig) == Decision(2, 4)


def test_a_run_with_no_removal_has_no_boundary_and_keeps_the_last_checkpoint():
    none = signals(flows=flows([0] * 6, [1, 2, 3, 4, 5, 6]))
    for name in ("cumulative", "cumulative_live", "boundary_then_eval_loss", "crossover"):
        decision = standard_rules()[name].pick(none)
        assert decision.step == 32 and decision.fired is False, name  # never step 0, the model before SFT


def test_a_single_checkpoint_is_kept_by_every_rule():
    one = Signals([0], pd.Series([1.0], index=[0]), None)
    quality = pd.DataFrame({"step": [0], "accuracy": [0.5], "test_loss": [1.0]})
    table = rule_table(one, quality, standard_rules())
    assert table["crossover"]["step"] is None and "flows" in table["crossover"]["not_applicable"]
    assert table["last"]["step"] == 0 and table["best_eval_loss"]["step"] == 0


def test_emergence_rho_keeps_the_checkpoint_before_cancelling_emergence():
    rho = [float("nan"), 1.0, 0.8, 0.5, 0.2, 0.1]
    sig = signals(flows=flows([5, 3, 1, 0, 1, 0], [0, 1, 4, 8, 9, 12], rho), emerged_rho=pd.Series(rho, STEPS[1:]))
    assert standard_rules(rho_threshold=0.3)["emergence_rho"].pick(sig) == Decision(8, 16)
    assert standard_rules(rho_threshold=0.6)["emergence_rho"].pick(sig) == Decision(4, 8)
    assert standard_rules(rho_threshold=0.05)["emergence_rho"].pick(sig).fired is False


def test_eval_accuracy_and_probe_utility_rules():
    acc = pd.Series([0.2, 0.2, 0.5, 0.6, 0.6, 0.55, 0.7], index=STEPS)
    sig = signals(eval_accuracy=acc, probe_utility=pd.Series([2.0, 2.0, 1.0, 0.9, 1.1, 1.2, 0.5], index=STEPS))
    rules = standard_rules(utility_patience=2)
    assert rules["eval_accuracy_patience_2"].pick(sig) == Decision(4, 16)  # 8 ties (1), 16 worse (2)
    assert rules["probe_utility_patience"].pick(sig) == Decision(4, 16)


def test_boundary_then_eval_loss_never_keeps_a_step_before_the_boundary():
    # the live boundary is 4, known at 8; eval-loss patience 2 counted from step 4 on
    loss = pd.Series([3.6, 3.6, 1.0, 2.5, 2.6, 2.7, 2.8], index=STEPS)
    pick = standard_rules()["boundary_then_eval_loss"].pick(signals(eval_loss=loss))
    assert pick == Decision(4, 16)
    assert standard_rules()["eval_loss_patience_2"].pick(signals(eval_loss=loss)) == Decision(2, 8)


def test_boundary_then_eval_loss_never_stops_while_the_boundary_has_not_settled():
    unsettled = flows([1, 2, 3, 4, 5, 6], [0] * 6)  # every checkpoint moves the cumulative boundary
    loss = pd.Series([3.0, 2.0, 2.5, 2.6, 2.7, 2.8, 2.9], index=STEPS)  # eval-loss patience alone stops at 4
    assert standard_rules()["eval_loss_patience_2"].pick(signals(eval_loss=loss)).decided_at == 4
    pick = standard_rules(fraction=0.99)["boundary_then_eval_loss"].pick(signals(eval_loss=loss, flows=unsettled))
    assert pick == Decision(32, 32, fired=False)


def test_best_within_drift_stays_within_the_budgets():
    acc = pd.Series([0.2, 0.3, 0.5, 0.6, 0.8, 0.9, 0.95], index=STEPS)
    drift = pd.DataFrame({"knowledge_drop": [0, 0, 0.01, 0.03, 0.04, 0.06, 0.10],
                          "format_drift": [0, 0, 0, 0, 0.2, 0.0, 0.0]}, index=STEPS)
    sig = signals(eval_accuracy=acc, drift=drift)
    rule = standard_rules(max_knowledge_drop=0.05, max_format_drift=0.1)["best_within_drift"]
    assert rule.pick(sig) == Decision(4, 32, fired=False)  # 8 answers with labels too often; 16 and 32 forget
    loose = standard_rules(max_knowledge_drop=0.2, max_format_drift=0.5)["best_within_drift"]
    assert loose.pick(sig).step == 32
    tight = standard_rules(max_knowledge_drop=0.0, max_format_drift=0.0)["best_within_drift"]
    assert tight.pick(sig).step == 1  # steps 0 and 1 fit; 1 is better on validation


def test_no_rule_reads_the_test_split():
    """Signals has no field for test data; the rule table's picks do not move when every test number does."""
    import dataclasses

    assert not any("test" in f.name for f in dataclasses.fields(Signals))
    acc = pd.Series([0.2, 0.3, 0.5, 0.6, 0.8, 0.9, 0.95], index=STEPS)
    drift = pd.DataFrame({"knowledge_drop": [0.0] * 7, "format_drift": [0.0] * 7, "kl": [0.0] * 7}, index=STEPS)
    sig = signals(eval_accuracy=acc, drift=drift, probe_utility=pd.Series(np.linspace(2, 1, 7), index=STEPS))
    picks = []
    for seed in range(3):
        rng = np.random.default_rng(seed)
        quality = pd.DataFrame({"step": STEPS, "accuracy": rng.uniform(size=7), "test_loss": rng.uniform(size=7)})
        table = rule_table(sig, quality, standard_rules())
        picks.append({name: row["step"] for name, row in table.items() if name != ORACLE})
    assert picks[0] == picks[1] == picks[2]


# --------------------------------------------------------------------------- offline = live, step by step


def random_run(seed: int):
    """A constructed run: interaction checkpoints log-spaced, evaluations at every step, some NaN losses."""
    rng = np.random.default_rng(seed)
    interaction = [0, 1, 2, 4, 8, 12, 16, 20, 24]
    evaluations = list(range(1, 25))
    keys = [("AND", m) for m in range(1, 16)] + [("OR", m) for m in range(1, 8)]
    frames = {}
    for step in interaction:
        spec = {}
        for sample in ("a", "b", "c"):
            keep = rng.uniform(size=len(keys)) < (0.7 if step < 6 else 0.4)
            spec[(sample, step)] = {k: float(rng.choice([-1, 1]) * rng.uniform(0.2, 1.0)) for k, on in zip(keys, keep) if on}
        frames[step] = effects_frame(spec, split="validation")
    loss = {s: float(np.round(2.0 - 0.05 * s + rng.normal(0, 0.15), 1)) for s in evaluations}
    if seed % 3 == 0:
        loss[1] = NAN
    accuracy = {s: float(np.round(0.3 + 0.02 * s + rng.normal(0, 0.05), 2)) for s in evaluations}
    return interaction, evaluations, frames, loss, accuracy


def offline_signals(interaction, frames, loss, accuracy):
    effects = pd.concat(frames.values(), ignore_index=True)
    flow = interval_flows(effects)
    steps = sorted(set(interaction) | set(loss))
    return Signals(steps, pd.Series(loss), flow, probe_utility(effects, split="validation"),
                   flow.set_index("step")["emerged_rho"], pd.Series(accuracy))


class ReplayMonitor:
    """The real InteractionMonitor, fed the constructed run through the trainer's events."""

    def __init__(self, rule: str, frames: dict, accuracy: dict, **rules):
        from sftscope.data import Pair
        from sftscope.monitor import InteractionMonitor

        class Monitor(InteractionMonitor):
            def _extract(self, model, step):
                self.frames.append(frames[step])

            def _drift_metrics(self, model):
                return {}

            def _accuracy(self, model, step):
                self.eval_accuracy[step] = accuracy[step]

        self.monitor = Monitor(None, [Pair("unused prompt here", "x")], steps=list(frames), stop_early=True,
                               stop_rule=rule, eval_pairs=[Pair("a", "x")], labels=["x"], **rules)

    def run(self, last: int, loss: dict):
        from transformers import TrainerControl

        control = TrainerControl()
        state = SimpleNamespace(global_step=0, is_world_process_zero=True)
        self.monitor.on_train_begin(None, state, control, model="model")
        for step in range(1, last + 1):
            state.global_step = step
            control.should_evaluate = step in loss  # what the trainer's schedule says before the monitor runs
            self.monitor.on_step_end(None, state, control, model="model")
            if step in loss:
                self.monitor.on_evaluate(None, state, control, metrics={"eval_loss": loss[step]}, model="model")
            if control.should_training_stop:
                break
        self.monitor.on_train_end(None, state, control)
        return self.monitor.keep_step, self.monitor.stopped_at


LIVE = [name for name, rule in standard_rules().items() if rule.live]


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("name", LIVE)
def test_the_offline_pick_is_what_the_monitor_decides_step_by_step(name, seed):
    interaction, evaluations, frames, loss, accuracy = random_run(seed)
    offline = standard_rules()[name].pick(offline_signals(interaction, frames, loss, accuracy))
    keep, stopped = ReplayMonitor(name, frames, accuracy).run(evaluations[-1], loss)
    assert keep == offline.step, name
    assert stopped == (offline.decided_at if offline.fired else None), name


def test_every_live_rule_is_replayed_and_the_rest_decide_at_the_end():
    rules = standard_rules()
    assert set(LIVE) == {n for n in rules if n not in ("cumulative", "best_within_drift")}
    assert all(rules[n].check is None for n in ("cumulative", "best_within_drift", "best_eval_loss",
                                                 "best_eval_accuracy", "last"))


# --------------------------------------------------------------------------- the default and the benchmark


def test_default_rule_is_offered_and_is_the_settings_default():
    from sftscope.config import STOP_RULES

    rules = standard_rules()
    assert set(STOP_RULES) == set(rules)
    assert DEFAULT_RULE in rules and rules[DEFAULT_RULE].live and rules["last"].pick(signals()).fired is False
    assert AnalysisSettings().stop_rule == DEFAULT_RULE
    assert not math.isnan(rules["last"].pick(signals()).step)


def test_default_rule_is_the_stopping_benchmark_winner():
    """The shipped default must be what the shipped benchmark record chose, under today's rule names."""
    record = benchmark_record()
    assert record is not None, "src/sftscope/stopping_benchmark.json is missing: run benchmarks/stopping.py"
    regrets = record["heldout_mean_regret"]
    assert set(regrets) <= set(standard_rules()), "the record names rules that no longer exist: rerun the benchmark"
    assert record["default_rule"] == DEFAULT_RULE == AnalysisSettings().stop_rule
    assert record["n_runs"] >= 16 and len(record["datasets"]) >= 3
    # the winner is the default only where its interval separates it from the next rule; otherwise the simpler rule
    best = min(regrets, key=regrets.get)
    if record["separated"]:
        assert DEFAULT_RULE == best
    else:
        assert record["simplicity"].index(DEFAULT_RULE) <= record["simplicity"].index(best)
