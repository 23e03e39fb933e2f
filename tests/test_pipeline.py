import json
from pathlib import Path

import pytest

from sftscope import SftscopeError
from sftscope.cli import main
from sftscope.config import load_run_config, run_config_from_dict
from sftscope.pipeline import run


@pytest.fixture(scope="module")
def tiny_setup(tmp_path_factory, tiny_llama, tiny_gemma, word_tokenizer):
    root = tmp_path_factory.mktemp("pipe")
    for name, model in (("llama", tiny_llama), ("gemma", tiny_gemma)):
        model.save_pretrained(root / name)
        word_tokenizer.save_pretrained(root / name)
    rows = [{"prompt": f"classify emotion : we won the game today {w}", "completion": "joy"} for w in ("so", "very", "great")]
    rows += [{"prompt": f"classify emotion : my flight got cancelled again {w}", "completion": "anger"}
             for w in ("so", "today", "terrible")]
    (root / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    raw = {
        "output_dir": str(root / "out"),
        "train": {"model": str(root / "llama"), "batch_size": 2, "max_steps": 4, "checkpoint_every": 2,
                  "learning_rate": 5e-2, "max_length": 64, "lora": {"r": 2, "alpha": 4},
                  "data": {"train": str(root / "d.jsonl"), "test_ratio": 0.34, "max_train_examples": None}},
        "baseline": {"model": str(root / "gemma"), "max_steps": 2},
        "analysis": {"samples_per_split": 1, "n_players": 4},
    }
    return root, raw


def test_run_then_rerun_skips_finished_work(tiny_setup):
    root, raw = tiny_setup
    messages = []
    summary = run(run_config_from_dict(raw), say=messages.append)
    out = root / "out"
    assert (out / "summary.json").exists() and (out / "report.html").exists()
    saved = json.loads((out / "summary.json").read_text())
    for key in ("recommended_step", "stage_boundary_step", "min_test_loss_step", "findings", "settings"):
        assert key in saved
    assert saved["recommended_step"] == summary["recommended_step"]
    assert (out / "baseline" / "analysis").exists() is False  # the baseline is analysed inside the target folder
    units = sorted((out / "target" / "analysis" / "effects").rglob("*.parquet"))
    assert {p.parts[-3] for p in units} == {"target", "baseline"}
    stamps = {p: p.stat().st_mtime_ns for p in units}

    messages.clear()
    run(run_config_from_dict(raw), say=messages.append)
    assert any("target: training already done" in m for m in messages)
    assert any("baseline: training already done" in m for m in messages)
    assert {p: p.stat().st_mtime_ns for p in units} == stamps  # nothing recomputed


def test_run_config_errors(tmp_path):
    with pytest.raises(SftscopeError, match="config: unknown key 'trian'"):
        run_config_from_dict({"trian": {}})
    with pytest.raises(SftscopeError, match="config.baseline: unknown key 'modle'"):
        run_config_from_dict({"baseline": {"modle": "x"}})
    with pytest.raises(SftscopeError, match="config.analysis.tau: expected float"):
        run_config_from_dict({"analysis": {"tau": "big"}})
    path = tmp_path / "c.yaml"
    path.write_text("output_dir: x\nbaseline: null\n", encoding="utf-8")
    assert load_run_config(path).baseline is None


def test_cli_bad_config_is_one_line(tmp_path, capsys):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  epochs: many\n", encoding="utf-8")
    assert main(["run", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "sftscope: error: " + str(path) + ".train.epochs: expected float, got str ('many')"


PAPER = sorted((Path(__file__).parents[1] / "examples" / "paper").glob("*.yaml"))


def test_the_papers_seven_settings_validate_and_dry_run(capsys, restore_logging):
    assert len(PAPER) == 7
    pairs = {}
    for path in PAPER:
        config = load_run_config(path)  # validated: types, values, n_players within the exact limit
        assert config.analysis.n_players == 10 and config.train.lora.target_modules == "all-linear"
        assert config.train.batch_size * config.train.gradient_accumulation_steps == 64
        pairs[path.stem] = (config.train.model, (config.baseline or {}).get("model"))
        assert main(["run", str(path), "--dry-run"]) == 0
        out = capsys.readouterr().out
        assert "masked prompts" in out and out.strip().endswith("nothing was loaded, trained or written (--dry-run)")
    llama2, qwen3, qwen7 = "meta-llama/Llama-2-7b-chat-hf", "Qwen/Qwen2.5-3B-Instruct", "Qwen/Qwen2.5-7B-Instruct"
    assert pairs["goemotions-qwen2.5-3b"] == (qwen3, llama2) and pairs["goemotions-llama2-7b"] == (llama2, qwen3)
    assert pairs["unilaw-qwen2.5-3b"] == (qwen3, qwen7) and pairs["unilaw-qwen2.5-7b"] == (qwen7, qwen3)
    assert pairs["dolly-gemma3-4b"] == ("google/gemma-3-4b-it", None)


def test_dry_run_counts_a_local_run(tmp_path, capsys, restore_logging):
    path = tmp_path / "c.yaml"
    path.write_text(f"output_dir: {tmp_path / 'out'}\ntrain: {{max_steps: 40, checkpoint_every: 16}}\n"
                    "analysis: {samples_per_split: 2, n_players: 5}\n", encoding="utf-8")
    assert main(["run", str(path), "--dry-run"]) == 0
    out = capsys.readouterr().out
    # target: checkpoints 0 1 2 4 8 16 32 40 = 8; (2 train + 2 validation + 4 general) probes x (32 masks + 1 for
    # coverage + 256 for the whole-prompt R²) x 8, and the baseline's 4 task probes x the same
    per_result = 32 + 1 + 256
    assert "8 checkpoints (0, 1, 2, 4, 8, 16, 32, 40)" in out
    assert f"{8 * per_result * 8 + 4 * per_result:,} masked prompts" in out
    assert "64 train / 60 validation / 60 test examples" in out
    # task quality: 60 validation + 60 test examples x 8 checkpoints x (a prompt pass + a continuation per label)
    assert f"120 validation and test examples at 8 checkpoints: {120 * 8 * 6:,} sequences (a prompt pass and 5 " \
        "continuation(s)" in out
    assert "210 general prompts" in out and "for the base model and 8 checkpoints" in out
    assert not (tmp_path / "out").exists()


def test_the_other_examples_validate():
    from sftscope.config import load_config

    for name in ("smollm2-emotions", "gemma3-emotions", "my-data"):
        config = load_config(Path(__file__).parents[1] / "examples" / f"{name}.yaml")
        assert config.epochs > 0 and config.lora.target_modules == "all-linear"
