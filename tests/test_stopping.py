"""Stopping rules on constructed loss, quality and interaction tables with known answers."""

import math

import numpy as np
import pandas as pd
import pytest

from sftscope.config import AnalysisSettings
from sftscope.stopping import (
    DEFAULT_RULE, ORACLE, Decision, Signals, benchmark_record, patience_pick, rule_table, standard_rules,
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


@pytest.mark.parametrize("patience", [1, 2, 3])
@pytest.mark.parametrize("seed", range(5))
def test_patience_equals_the_real_transformers_callback(patience, seed):
    from transformers import EarlyStoppingCallback, TrainerControl, TrainerState, TrainingArguments

    values = np.round(np.random.default_rng(seed).uniform(1, 2, size=12), 1)  # rounding makes ties
    steps = list(range(1, 13))
    args = TrainingArguments(output_dir="unused", metric_for_best_model="loss", greater_is_better=False,
                             eval_strategy="steps", save_strategy="steps", load_best_model_at_end=True,
                             report_to="none")
    callback, state, control = EarlyStoppingCallback(patience), TrainerState(), TrainerControl()
    stopped, best_step = None, None
    for step, value in zip(steps, values):
        callback.on_evaluate(args, state, control, metrics={"eval_loss": float(value)})
        if state.best_metric is None or value < state.best_metric:  # what Trainer._determine_best_metric does
            state.best_metric, best_step = float(value), step
        if control.should_training_stop:
            stopped = step
            break
    ours = patience_pick(pd.Series(values, index=steps), patience)
    if stopped is None:
        assert ours is None
    else:
        assert ours == Decision(best_step, stopped)


def test_rule_table_reports_quality_and_compute():
    quality = pd.DataFrame({"step": STEPS, "accuracy": [0.2, 0.2, 0.5, 0.4, 0.7, 0.7, 0.6],
                            "test_loss": LOSS.to_numpy()})
    table = rule_table(signals(), quality, standard_rules())
    assert table["eval_loss_patience_1"] | {} == {**table["eval_loss_patience_1"], "step": 2, "decided_at": 4}
    assert table["eval_loss_patience_1"]["accuracy"] == 0.5
    assert table["eval_loss_patience_1"]["compute_fraction"] == pytest.approx(4 / 32)
    assert table["eval_loss_patience_2"]["step"] == 8 and table["eval_loss_patience_2"]["test_loss"] == 1.5
    assert table["last"] == {**table["last"], "step": 32, "accuracy": 0.6, "compute_fraction": 1.0}
    assert table[ORACLE]["step"] == 8 and table[ORACLE]["kind"] == "oracle"  # ties: the earliest best
    # cumulative: 9 of 10 removals by step 4 (fraction 0.9); it needs the final count: decided at the end
    assert table["cumulative"]["step"] == 4 and table["cumulative"]["compute_fraction"] == 1.0
    # crossover: emergence first outpaces removal in the interval (2, 4]: boundary 2, known at 4
    assert (table["crossover"]["step"], table["crossover"]["decided_at"]) == (2, 4)


def test_open_ended_runs_have_no_accuracy_and_no_oracle():
    quality = pd.DataFrame({"step": STEPS, "accuracy": [float("nan")] * 7, "test_loss": LOSS.to_numpy()})
    table = rule_table(signals(), quality, standard_rules())
    assert ORACLE not in table and table["last"]["accuracy"] is None
    # with no accuracy the eval-accuracy rule falls back to the eval loss
    assert table["eval_accuracy_patience_2"]["step"] == table["eval_loss_patience_2"]["step"]


def test_live_boundary_waits_until_it_holds():
    # removals 5,3,1 then none: the cumulative boundary (0.9) moves 1, 2, 4, 4 ...
    rule = standard_rules(fraction=0.9, boundary_patience=1)["cumulative_live"]
    live = rule.pick(signals())
    assert live == Decision(4, 8)  # boundary 4 first seen at 4, held at 8 (one more checkpoint after it)
    # patience 2: boundaries 1, 2, 4, 4, 4 (the removal at 16 still leaves 9 of 10 by step 4) -> held at 16
    assert standard_rules(fraction=0.9, boundary_patience=2)["cumulative_live"].pick(signals()) == Decision(4, 16)
    # fraction 0.95: boundaries 1, 2, 4, 4, 16, 16 -> never the same three times in a row
    assert standard_rules(fraction=0.95, boundary_patience=2)["cumulative_live"].pick(signals()).fired is False


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


def test_default_rule_is_offered_and_is_the_settings_default():
    from sftscope.config import STOP_RULES

    rules = standard_rules()
    assert set(STOP_RULES) == set(rules)
    assert DEFAULT_RULE in rules and rules[DEFAULT_RULE].live and rules["last"].pick(signals()).fired is False
    assert AnalysisSettings().stop_rule == DEFAULT_RULE
    assert not math.isnan(rules["last"].pick(signals()).step)


def test_the_report_says_plainly_when_a_later_checkpoint_scored_better():
    from sftscope.report import headline

    def summary(best_step, best_accuracy):
        row = lambda step, acc: {"step": step, "accuracy": acc, "test_loss": 0.3, "compute_fraction": 0.5,  # noqa: E731
                                 "kind": "eval loss", "rule": "early stopping"}
        return {"rules": {"recommended": row(8, 0.50), "eval_loss_patience_2": row(8, 0.50),
                          ORACLE: row(best_step, best_accuracy)},
                "recommended_rule": "eval_loss_patience_2", "stage_boundary_step": 4,
                "quality": [{"step": 4, "accuracy": 0.25, "macro_f1": 0.2}, {"step": 8, "accuracy": 0.5, "macro_f1": 0.4}],
                "settings": {"stage_rule": "cumulative"}}

    text = " ".join(headline(summary(32, 0.75)))
    assert "Recommended checkpoint: step 8" in text and "test accuracy is 50% (macro-F1 0.40)" in text
    assert "A later checkpoint scored clearly better: step 32 has test accuracy 75%, 25 points more." in text
    assert "keeps test accuracy 25%, 25 points below the recommended checkpoint" in text
    text = " ".join(headline(summary(8, 0.51)))
    assert "No checkpoint scored more than 2 points better" in text and "clearly better" not in text
    assert "Eval-loss early stopping" not in text  # it is the recommended rule here
    last = summary(80, 0.75)
    last["rules"]["recommended"] = {**last["rules"]["recommended"], "step": 80, "accuracy": 0.75}
    last["recommended_rule"] = "last"
    last["quality"].append({"step": 80, "accuracy": 0.75, "macro_f1": 0.75})
    text = " ".join(headline(last))
    assert "Eval-loss early stopping (patience 2) would keep step 8 at 50%, 25 points below the recommended" in text


def test_headline_quotes_the_stopping_benchmark():
    from sftscope.report import benchmark_sentence

    record = {"n_runs": 8, "datasets": ["emotions", "tickets"],
              "heldout_mean_regret": {"last": 7.9, "eval_loss_patience_2": 8.8, "emergence_rho": 7.9,
                                      "probe_utility_patience": 10.4, "crossover": 53.8},
              "heldout_kept_earlier": {"last": 0, "eval_loss_patience_2": 3, "emergence_rho": 0,
                                "probe_utility_patience": 3, "crossover": 4},
              "kinds": {"last": "reference", "eval_loss_patience_2": "eval loss", "emergence_rho": "interaction",
                        "probe_utility_patience": "interaction", "crossover": "interaction"}}
    text = benchmark_sentence("last", record)
    assert "8 SFT runs on 2 data sets" in text and "last kept checkpoints on average 7.9 accuracy points below" in text
    assert "eval-loss early stopping (patience 2) 8.8" in text
    # emergence_rho kept the last checkpoint on every run: the best interaction rule that stopped early is named
    assert "the best interaction-based rule that stopped early, probe_utility_patience, 10.4 (within 2 points" in text
    record["heldout_mean_regret"]["probe_utility_patience"] = 11.0
    assert "11.0 (not within 2 points of eval-loss early stopping)" in benchmark_sentence("last", record)
    assert "patience 2) 8.8" not in benchmark_sentence("eval_loss_patience_2", record)
    assert benchmark_sentence("cumulative", record) is None and benchmark_sentence("last", None) is None


def test_default_rule_is_the_stopping_benchmark_winner():
    """The shipped default must be what the shipped benchmark record measured best, under today's rule names."""
    record = benchmark_record()
    assert record is not None, "src/sftscope/stopping_benchmark.json is missing: run benchmarks/stopping.py"
    regrets = record["heldout_mean_regret"]
    assert set(regrets) <= set(standard_rules()), "the record names rules that no longer exist: rerun the benchmark"
    assert record["default_rule"] == DEFAULT_RULE == AnalysisSettings().stop_rule
    assert regrets[DEFAULT_RULE] == min(regrets.values())


def test_live_rules_skip_evaluations_before_the_first_interval():
    """An eval-only step before the first pair of interaction checkpoints must not crash the live rules."""
    frame = pd.DataFrame({"step": [10, 20, 30], "step_from": [0, 10, 20], "removed": [5, 1, 0], "emerged": [1, 1, 1],
                          "emerged_rho": [float("nan")] * 3})
    steps = [0, 5, 10, 20, 30]
    live = Signals(steps, pd.Series([3.0, 2.5, 2.0, 1.5, 1.6], index=steps), frame)
    rules = standard_rules(fraction=0.9)
    assert rules["cumulative_live"].pick(live) == Decision(20, 30)
    assert rules["boundary_then_eval_loss"].pick(live).step == 20
