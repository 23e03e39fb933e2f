import json

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
