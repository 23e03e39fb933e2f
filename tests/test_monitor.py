import copy
import json

import pytest

from sftscope import SftscopeError
from sftscope.data import Pair
from sftscope.stopping import StageRule
from sftscope.monitor import InteractionMonitor
from sftscope.config import config_from_dict
from sftscope.train import build_trainer

PROBES = [Pair("classify emotion : we won the game today so great", "joy"),
          Pair("classify emotion : my flight got cancelled again today", "anger")]


@pytest.fixture
def setup(tmp_path, tiny_llama, word_tokenizer):
    rows = [{"prompt": p.prompt + f" {w}", "completion": p.response} for p in PROBES for w in ("so", "very", "!")]
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    config = config_from_dict({
        "output_dir": str(tmp_path / "run"), "batch_size": 2, "max_steps": 6, "checkpoint_every": 100,
        "learning_rate": 5e-2, "max_length": 64, "lora": {"r": 2, "alpha": 4},
        "data": {"train": str(data), "test_ratio": 0.34},
    })
    return config, copy.deepcopy(tiny_llama), word_tokenizer


def test_monitor_stops_training_when_told(setup):
    config, model, tok = setup
    monitor = InteractionMonitor(tok, PROBES, steps=range(7), n_players=3, stop_early=True, patience=1,
                                 rule=StageRule("cumulative", 0.0), stop_rule="cumulative_live")
    trainer, _ = build_trainer(config, model=model, tokenizer=tok, callbacks=[monitor])
    monitor.attach(trainer)
    trainer.train()
    # a fraction of 0 puts the boundary at the first interval; patience 1 = stop once it held one more checkpoint
    assert monitor.boundary in (0, 1) and monitor.stopped_at > monitor.boundary
    assert monitor.history[-2:] == [monitor.boundary, monitor.boundary]
    assert trainer.state.global_step == monitor.stopped_at < 6
    logged = [h for h in trainer.state.log_history if "interactions/removed" in h]
    assert logged and logged[-1]["interactions/stage_boundary"] == float(monitor.boundary)


def test_monitor_without_stopping_runs_to_the_end(setup):
    config, model, tok = setup
    monitor = InteractionMonitor(tok, PROBES, steps=[0, 3, 6], n_players=3, stop_early=False)
    trainer, _ = build_trainer(config, model=model, tokenizer=tok, callbacks=[monitor])
    monitor.attach(trainer)
    trainer.train()
    assert trainer.state.global_step == 6 and monitor.stopped_at is None
    assert sorted(set(f["step"].iloc[0] for f in monitor.frames)) == [0, 3, 6]
    assert sum("interactions/emerged" in h for h in trainer.state.log_history) == 2


def test_monitor_needs_probes(word_tokenizer):
    with pytest.raises(SftscopeError, match="at least one probe"):
        InteractionMonitor(word_tokenizer, [])


def test_monitor_stops_by_eval_loss_early_stopping(setup):
    import pandas as pd

    from sftscope.stopping import patience_pick

    config, model, tok = setup
    config.learning_rate = 1.0  # large enough that the eval loss soon stops improving
    config.checkpoint_every = 1  # the trainer evaluates after every step
    config.max_steps = 10
    monitor = InteractionMonitor(tok, PROBES, steps=range(11), n_players=3, stop_early=True, metric="eval_validation_loss",
                                 stop_rule="eval_loss_patience_2")
    trainer, _ = build_trainer(config, model=model, tokenizer=tok, callbacks=[monitor])
    monitor.attach(trainer)
    trainer.train()
    losses = pd.Series(monitor.eval_loss)
    expected = patience_pick(losses, 2)
    assert expected is not None and expected.decided_at < 10  # this run's eval loss stops improving
    assert sorted(losses.index) == list(range(1, expected.decided_at + 1))
    assert (monitor.keep_step, monitor.stopped_at) == (expected.step, expected.decided_at)
    assert trainer.state.global_step == expected.decided_at


def test_monitor_refuses_a_rule_that_needs_the_whole_run(word_tokenizer):
    with pytest.raises(SftscopeError, match="cannot decide during training"):
        InteractionMonitor(word_tokenizer, PROBES, stop_rule="cumulative")


def test_monitor_refuses_to_wait_for_evaluations_that_never_come(setup, caplog):
    from types import SimpleNamespace

    config, model, tok = setup
    monitor = InteractionMonitor(tok, PROBES, steps=[0], n_players=3, stop_early=True, stop_rule="eval_loss_patience_2")
    trainer, _ = build_trainer(config, model=model, tokenizer=tok, callbacks=[monitor])
    monitor.attach(trainer)
    trainer.eval_dataset = None
    with pytest.raises(SftscopeError, match="has no eval_dataset"):
        trainer.train()
    with caplog.at_level("WARNING", logger="sftscope.monitor"):  # evaluations configured, none reported
        InteractionMonitor(tok, PROBES, stop_early=True, stop_rule="eval_loss_patience_1").on_train_end(
            SimpleNamespace(), SimpleNamespace(global_step=6), None)
    assert "could not stop it" in caplog.text
    with pytest.raises(SftscopeError, match="cannot decide during training"):
        InteractionMonitor(tok, PROBES, stop_rule="eval_accuracy_patience_2")


def test_monitor_names_a_missing_eval_metric(setup, caplog):
    config, model, tok = setup
    config.checkpoint_every = 1
    monitor = InteractionMonitor(tok, PROBES, steps=[0], n_players=3, stop_early=True, metric="eval_loss",
                                 stop_rule="eval_loss_patience_2")
    trainer, _ = build_trainer(config, model=model, tokenizer=tok, callbacks=[monitor])
    with caplog.at_level("WARNING", logger="sftscope.monitor"):
        trainer.train()
    assert trainer.state.global_step == 6 and monitor.stopped_at is None
    assert "no evaluation reported 'eval_loss'" in caplog.text and "eval_train_loss, eval_validation_loss" in caplog.text


def test_monitor_logs_the_step_it_keeps(setup):
    config, model, tok = setup
    config.learning_rate, config.checkpoint_every, config.max_steps = 1.0, 1, 10
    monitor = InteractionMonitor(tok, PROBES, steps=[0], n_players=3, stop_early=True, metric="eval_validation_loss",
                                 stop_rule="eval_loss_patience_2")
    trainer, _ = build_trainer(config, model=model, tokenizer=tok, callbacks=[monitor])
    monitor.attach(trainer)
    trainer.train()
    kept = [h["interactions/keep_step"] for h in trainer.state.log_history if "interactions/keep_step" in h]
    assert monitor.keep_step is not None and kept == [float(monitor.keep_step)]


def test_the_default_rule_never_stops_and_keeps_the_last_step(setup):
    from sftscope.stopping import DEFAULT_RULE

    config, model, tok = setup
    config.checkpoint_every = 1
    monitor = InteractionMonitor(tok, PROBES, steps=[0, 3, 6], n_players=3, stop_early=True, metric="eval_validation_loss")
    assert monitor.stop_rule == DEFAULT_RULE == "last"
    trainer, _ = build_trainer(config, model=model, tokenizer=tok, callbacks=[monitor])
    trainer.train()
    assert trainer.state.global_step == 6 and monitor.stopped_at is None and monitor.keep_step == 6


def test_monitor_logs_drift_from_the_base_model(setup):
    config, model, tok = setup
    config.learning_rate = 0.3
    monitor = InteractionMonitor(tok, PROBES, steps=[0, 3, 6], n_players=3, labels=["joy", "anger"], drift_prompts=4)
    trainer, _ = build_trainer(config, model=model, tokenizer=tok, callbacks=[monitor])
    monitor.attach(trainer)
    trainer.train()
    logged = [h for h in trainer.state.log_history if "drift/kl" in h]
    assert len(logged) == 3 and logged[0]["drift/kl"] == 0.0 and logged[0]["drift/agreement"] == 1.0  # step 0: base
    assert logged[-1]["drift/kl"] > 0 and all(0 <= h["drift/format"] <= 1 for h in logged)
