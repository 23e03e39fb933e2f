import json
from pathlib import Path

import pytest
import torch

from sftscope import SftscopeError
from sftscope.config import config_from_dict, load_config
from sftscope.models import load_checkpoint
from sftscope.store import RunFolder, read_losses
from sftscope.train import build_trainer, checkpoint_steps, train


def test_checkpoint_schedule():
    assert checkpoint_steps(50, 16) == [0, 1, 2, 4, 8, 16, 32, 48, 50]
    assert checkpoint_steps(6, 4) == [0, 1, 2, 4, 6]
    assert checkpoint_steps(3, 16) == [0, 1, 2, 3]
    assert checkpoint_steps(50, 16, dense=False) == [0, 16, 32, 48, 50]  # a baseline needs no early ones
    assert checkpoint_steps(32, 32, dense=False) == [0, 32]
    with pytest.raises(SftscopeError):
        checkpoint_steps(0, 4)


def test_config_validation(tmp_path):
    cfg = config_from_dict({"learning_rate": 1e-4, "lora": {"r": 4}, "data": {"train": "x.jsonl"}})
    assert cfg.lora.r == 4 and cfg.data.train == "x.jsonl" and cfg.learning_rate == 1e-4
    with pytest.raises(SftscopeError, match="unknown key 'lr'"):
        config_from_dict({"lr": 1})
    with pytest.raises(SftscopeError, match="config.lora.r: expected int, got str"):
        config_from_dict({"lora": {"r": "sixteen"}})
    with pytest.raises(SftscopeError, match="config.lora: unknown key 'rank'"):
        config_from_dict({"lora": {"rank": 4}})
    bad = tmp_path / "c.yaml"
    bad.write_text("model: [unclosed\n", encoding="utf-8")
    with pytest.raises(SftscopeError, match="malformed YAML"):
        load_config(bad)


@pytest.fixture
def tiny_data(tmp_path):
    rows = [{"prompt": f"classify emotion : we won the game {w}", "completion": "joy"} for w in ("today", "so", "very")]
    rows += [{"prompt": f"classify emotion : my flight got cancelled {w}", "completion": "anger"} for w in ("again", "today", "so")]
    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def tiny_config(tmp_path, data, **kw):
    raw = {"output_dir": str(tmp_path / "run"), "data": {"train": str(data), "test_ratio": 0.34, "seed": 0},
           "batch_size": 2, "max_steps": 6, "checkpoint_every": 4, "learning_rate": 1e-2, "max_length": 64,
           "lora": {"r": 2, "alpha": 4}}
    raw.update(kw)
    return config_from_dict(raw)


def test_loss_only_on_response_tokens(tmp_path, tiny_data, tiny_llama, word_tokenizer):
    import copy

    trainer, _ = build_trainer(tiny_config(tmp_path, tiny_data), model=copy.deepcopy(tiny_llama), tokenizer=word_tokenizer)
    features = [trainer.train_dataset[i] for i in range(2)]
    batch = trainer.data_collator(features)
    for ids, labels in zip(batch["input_ids"], batch["labels"]):
        trained = [int(t) for t, lab in zip(ids, labels) if lab != -100]
        text = word_tokenizer.decode(trained)
        assert text.split()[0] in ("joy", "anger") and "classify" not in text and "<user>" not in text


def test_tiny_run_makes_exactly_the_scheduled_checkpoints(tmp_path, tiny_data, tiny_llama, word_tokenizer):
    import copy

    base = copy.deepcopy(tiny_llama)
    run = train(tiny_config(tmp_path, tiny_data), model=copy.deepcopy(tiny_llama), tokenizer=word_tokenizer)
    assert sorted(RunFolder(run).checkpoints()) == [0, 1, 2, 4, 6]
    for folder in RunFolder(run).checkpoints().values():
        names = {p.name for p in folder.iterdir()}
        assert "adapter_model.safetensors" in names and not any(n.endswith((".bin", ".pt", ".pth")) for n in names)
    losses = read_losses(run)
    assert [r["step"] for r in losses] == [0, 1, 2, 4, 6]
    assert all("train_loss" in r and "validation_loss" in r and "test_loss" not in r for r in losses)  # test: unseen
    assert losses[-1]["train_loss"] < losses[0]["train_loss"]
    # step 0 is the untouched model; the last checkpoint changes the outputs
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        ref = base(ids).logits
        same = load_checkpoint(base, RunFolder(run).checkpoints()[0])(ids).logits
        moved = load_checkpoint(base, RunFolder(run).checkpoints()[6])(ids).logits
    assert torch.allclose(ref, same, atol=1e-6)
    assert not torch.allclose(ref, moved, atol=1e-3)
    assert torch.allclose(base(ids).logits, ref)  # base untouched


def test_loss_only_on_response_without_chat_template(tmp_path, tiny_data, tiny_llama, word_tokenizer):
    import copy

    plain = copy.deepcopy(word_tokenizer)
    plain.chat_template = None
    trainer, _ = build_trainer(tiny_config(tmp_path, tiny_data), model=copy.deepcopy(tiny_llama), tokenizer=plain)
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(2)])
    for ids, labels in zip(batch["input_ids"], batch["labels"]):
        trained = plain.decode([int(t) for t, lab in zip(ids, labels) if lab != -100]).split()
        assert trained[0] in ("joy", "anger") and "classify" not in trained


DATA = Path(__file__).parent / "data"


def write_parquet_fixture(path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{"sentence": f"classify emotion : we won the game today {w}", "target": "joy"} for w in ("so", "very")]
    rows += [{"sentence": f"classify emotion : my flight got cancelled {w}", "target": "anger"} for w in ("so", "today")]
    pq.write_table(pa.Table.from_pylist(rows), path)
    return {"train": str(path), "prompt_column": "sentence", "response_column": "target", "test_ratio": 0.5}


FORMATS = {
    "dolly-15k jsonl": lambda tmp: {"train": str(DATA / "dolly.jsonl"), "test": str(DATA / "dolly.jsonl"),
                                    "validation_ratio": 0.5},  # two rows: one to train on, one to validate
    "goemotions tsv + label list": lambda tmp: {"train": str(DATA / "goemotions_train.tsv"), "prompt_column": 0,
                                                "response_column": 1, "label_names": str(DATA / "goemotions_emotions.txt"),
                                                "test_ratio": 0.3},
    "parquet": lambda tmp: write_parquet_fixture(tmp / "rows.parquet"),
}


@pytest.mark.usefixtures("restore_logging")
@pytest.mark.parametrize("fmt", list(FORMATS))
def test_each_format_trains_one_step_through_the_cli(fmt, tmp_path, tiny_llama, word_tokenizer, capsys):
    import yaml

    from sftscope.cli import main

    model = tmp_path / "model"
    tiny_llama.save_pretrained(model)
    word_tokenizer.save_pretrained(model)
    data = {**FORMATS[fmt](tmp_path), "max_train_examples": None}
    config = {"output_dir": str(tmp_path / "run"), "model": str(model), "max_steps": 1, "batch_size": 2,
              "max_length": 64, "lora": {"r": 2, "alpha": 4}, "data": data}
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    assert main(["train", str(path), "--quiet"]) == 0, capsys.readouterr().err
    assert sorted(RunFolder(tmp_path / "run").checkpoints()) == [0, 1]


def test_lm_head_runs_only_at_labelled_positions_with_the_same_loss(tmp_path, tiny_data, tiny_llama, word_tokenizer,
                                                                    monkeypatch):
    """On the CPU TRL would project every position through the LM head; ours projects the labelled ones only."""
    import copy

    import trl.trainer.utils as trl_utils

    from sftscope.train import labelled_positions_only

    trainer, _ = build_trainer(tiny_config(tmp_path, tiny_data), model=copy.deepcopy(tiny_llama), tokenizer=word_tokenizer)
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(3)])
    rows = []
    apply = trl_utils._ChunkedLogProbFunction.apply
    monkeypatch.setattr(trl_utils._ChunkedLogProbFunction, "apply",
                        lambda hidden, *rest: rows.append(hidden.shape[0]) or apply(hidden, *rest))
    trainer.model.train()
    everywhere = super(type(trainer), trainer).compute_loss(trainer.model, dict(batch))  # TRL's own path
    labelled = trainer.compute_loss(trainer.model, dict(batch))
    labels = int((batch["labels"][:, 1:] != -100).sum())
    assert rows == [batch["labels"][:, 1:].numel(), labels] and labels < rows[0] / 2
    assert torch.allclose(labelled, everywhere, rtol=1e-5, atol=1e-6)
    (grad_all,) = torch.autograd.grad(everywhere, [p for p in trainer.model.parameters() if p.requires_grad][:1])
    (grad_ours,) = torch.autograd.grad(labelled, [p for p in trainer.model.parameters() if p.requires_grad][:1])
    assert torch.allclose(grad_ours, grad_all, rtol=1e-4, atol=1e-7)
    with labelled_positions_only():
        assert trl_utils._use_triton(torch.device("cpu"))
    assert not trl_utils._use_triton(torch.device("cpu"))  # restored: nothing outside the loss is changed


def test_gradient_checkpointing_follows_the_device_unless_set(tmp_path, tiny_data, tiny_llama, word_tokenizer):
    import copy

    from sftscope.config import changed_training_settings

    auto, _ = build_trainer(tiny_config(tmp_path, tiny_data), model=copy.deepcopy(tiny_llama), tokenizer=word_tokenizer)
    assert auto.args.gradient_checkpointing is torch.cuda.is_available()
    forced, _ = build_trainer(tiny_config(tmp_path, tiny_data, gradient_checkpointing=True),
                              model=copy.deepcopy(tiny_llama), tokenizer=word_tokenizer)
    assert forced.args.gradient_checkpointing is True
    # it changes no weights: a finished training is not refused for it
    assert changed_training_settings(tiny_config(tmp_path, tiny_data),
                                     tiny_config(tmp_path, tiny_data, gradient_checkpointing=True)) == []
    with pytest.raises(SftscopeError, match="gradient_checkpointing: expected bool or null"):
        tiny_config(tmp_path, tiny_data, gradient_checkpointing="yes")
