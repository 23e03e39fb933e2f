"""The answer's sentences: what the recommended checkpoint costs, and a cheaper one only where the numbers show it."""

import pandas as pd

from sftscope.headline import benchmark_sentence, cheaper_checkpoint, headline
from sftscope.summary import forgetting_summary


def drift_row(step, kl, change, share, missing=False):
    return {"step": step, "kl": {"mean": kl, "low": kl * 0.9, "high": kl * 1.1, "prompts": 210},
            "knowledge": {"base": 0.76, "checkpoint": 0.76 + change, "change": change, "low": change - 0.03,
                          "high": change + 0.03, "lost": 5, "gained": 3, "items": 320},
            "format": {"label_share": share, "base_label_share": 0.0, "agreement": 0.5}}


def summary(rows, accuracy, recommended=32):
    quality = [{"step": s, "accuracy": a, "macro_f1": a} for s, a in accuracy.items()]
    rec = {"step": recommended, "accuracy": accuracy[recommended], "test_loss": 0.3, "rule": "no early stopping"}
    return {"rules": {"recommended": rec, "last": rec}, "recommended_rule": "last", "quality": quality,
            "drift": {"per_checkpoint": rows, "missing": []}, "stage_boundary_step": 8,
            "settings": {"stage_rule": "cumulative", "drift": True}}


def test_a_cheaper_checkpoint_is_named_only_when_it_costs_clearly_less():
    accuracy = {0: 0.3, 8: 0.60, 16: 0.79, 32: 0.80}
    rows = [drift_row(0, 0.0, 0.0, 0.0), drift_row(8, 0.2, 0.0, 0.0), drift_row(16, 0.4, -0.01, 0.05),
            drift_row(32, 1.0, -0.02, 0.10)]
    step, quality, other = cheaper_checkpoint(summary(rows, accuracy))
    assert step == 16 and quality["accuracy"] == 0.79  # 8 is cheaper still, but 20 points less accurate
    lines = " ".join(headline(summary(rows, accuracy)))
    assert "KL from the base model 1.00 nats per token" in lines and "Step 16 loses at most 2 points" in lines
    # half the KL is the bar: 0.6 of it is not clearly less
    rows[2] = drift_row(16, 0.6, -0.01, 0.05)
    assert cheaper_checkpoint(summary(rows, accuracy)) is None
    assert "No checkpoint within 2 points of its test accuracy costs clearly less" in " ".join(headline(summary(rows, accuracy)))
    # a larger knowledge drop or more label answers disqualify a cheaper checkpoint
    rows[2] = drift_row(16, 0.3, -0.05, 0.05)
    assert cheaper_checkpoint(summary(rows, accuracy)) is None
    rows[2] = drift_row(16, 0.3, -0.01, 0.20)
    assert cheaper_checkpoint(summary(rows, accuracy)) is None


def test_nothing_costs_less_than_the_base_model():
    accuracy = {0: 0.80, 8: 0.80}
    rows = [drift_row(0, 0.0, 0.0, 0.0), drift_row(8, 0.0, 0.0, 0.0)]
    assert cheaper_checkpoint(summary(rows, accuracy, recommended=0)) is None


def test_the_answer_says_how_much_of_each_prompt_the_players_carry():
    accuracy = {0: 0.3, 8: 0.6, 32: 0.8}
    rows = [drift_row(0, 0.0, 0.0, 0.0), drift_row(32, 1.0, -0.02, 0.1)]
    s = summary(rows, accuracy)
    assert "carry this share" not in " ".join(headline(s))  # nothing measured, nothing said
    s["settings"] |= {"players": "words", "n_players": 8}
    s["whole_prompt"] = [
        {"model": "target", "step": 32, "split": "validation", "coverage": 0.9, "whole_r2": None},
        {"model": "target", "step": 32, "split": "train", "coverage": 1.1, "whole_r2": 0.75},
        {"model": "target", "step": 8, "split": "train", "coverage": 9.0, "whole_r2": None},  # not the recommended step
        {"model": "baseline", "step": 32, "split": "train", "coverage": 9.0, "whole_r2": None},
    ]
    text = " ".join(headline(s))
    assert "between 8 word players per prompt; at step 32" in text
    assert "train 1.10 (whole-prompt R² 0.75), validation 0.90." in text
    assert "describe the players, not the whole prompt" not in text
    s["whole_prompt"][0]["coverage"] = 3.2  # the background reverses what the players do
    assert "validation 3.20. Outside 0.5-1.5" in " ".join(headline(s))
    s["settings"]["players"] = "phrases"  # phrases cover every word: no caveat to add
    text = " ".join(headline(s))
    assert "8 phrase players" in text and "Outside 0.5-1.5" not in text


def test_an_undefined_correlation_says_why():
    accuracy = {0: 0.3, 8: 0.6, 16: 0.7, 32: 0.8}
    rows = [drift_row(0, 0.0, 0.0, 0.0), drift_row(8, 0.2, 0.0, 0.0), drift_row(16, 0.42, 0.0, 0.0),
            drift_row(32, 1.0, 0.0, 0.1)]
    drift = pd.DataFrame({"kl": [r["kl"]["mean"] for r in rows], "knowledge_change": [0.0] * 4},
                         index=[r["step"] for r in rows])
    s = summary(rows, accuracy)
    s["drift"]["forgetting"] = forgetting_summary(pd.Series([0.0, 0.1, 0.3, 0.5], index=drift.index), drift)
    text = " ".join(headline(s))
    assert "correlates with the KL at r = 0.98" in text
    assert "has no correlation with the knowledge change (the knowledge change is 0 at all 4 checkpoints)" in text
    s["drift"]["forgetting"] = forgetting_summary(pd.Series([0.0, 0.5], index=[0, 32]), drift)
    assert "has no correlation with the KL (fewer than 3 checkpoints have both)" in " ".join(headline(s))


def test_the_benchmark_sentence_gives_the_record_and_its_reason_as_sentences():
    record = {"n_runs": 24, "datasets": ["a", "b", "c"], "default_rule": "last",
              "heldout_mean_regret": {"last": 1.8, "cumulative": 6.8, "probe_utility_patience": 0.7},
              "heldout_regret_interval": {"last": [0.7, 3.1]},
              "default_reason": "probe_utility_patience is not separated from last; last is the simplest of these"}
    said = benchmark_sentence("last", record)
    assert "24 SFT runs on 3 data sets" in said and "1.8 (95% interval 0.7-3.1)" in said and "cumulative 6.8" in said
    assert said.endswith("last is the simplest of these.") and ".." not in said
    other = benchmark_sentence("cumulative", record)  # not the default: the record's reason is not its own
    assert other.endswith("last 1.8.") and "simplest" not in other
    assert benchmark_sentence("crossover", record) is None  # a rule the benchmark did not measure
