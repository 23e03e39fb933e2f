import json

import pandas as pd
import pytest

from sftscope import SftscopeError
from sftscope.analyze import analyze
from sftscope.config import AnalysisSettings
from sftscope.store import RunFolder, load_effects, write_unit


SETTINGS = AnalysisSettings(samples_per_split=2, n_players=4, batch_samples=2)  # batches of samples, as on a GPU


def test_analysis_resumes_to_the_same_rows(tiny_run, monkeypatch):
    import sftscope.extract as extract_module

    summary = analyze(tiny_run, SETTINGS)
    clean = load_effects(tiny_run).sort_values(["model", "step", "sample", "kind", "bitmask"]).reset_index(drop=True)
    assert sorted(clean["step"].unique()) == [0, 1, 2, 4]
    assert clean.groupby(["step", "sample"]).size().eq(2 * 16).all()
    assert summary["recommended_step"] in summary["checkpoints"]
    assert len(summary["findings"]) == 5

    # crash after one more batch of units, then resume: same rows, nothing duplicated
    for path in list(RunFolder(tiny_run).unit("target", 0, "x").parents[1].glob("step-*/*.parquet"))[:5]:
        path.unlink()
    real = extract_module.extract_many
    calls = {"n": 0}

    def crashing(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] > 1:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(extract_module, "extract_many", crashing)
    with pytest.raises(KeyboardInterrupt):
        analyze(tiny_run, SETTINGS)
    assert calls["n"] == 2
    monkeypatch.setattr(extract_module, "extract_many", real)
    analyze(tiny_run, SETTINGS)
    again = load_effects(tiny_run).sort_values(["model", "step", "sample", "kind", "bitmask"]).reset_index(drop=True)
    pd.testing.assert_frame_equal(again, clean)
    assert not list(tiny_run.glob("analysis/**/*.tmp"))


def test_zero_adapter_checkpoints_are_computed_once(tiny_run, monkeypatch):
    """Step 1 under a warm-up is the base model (its first update had a learning rate of 0), as step 0 is:
    its units and quality are written from step 0's computation, and equal what computing it gives."""
    import sftscope.extract as extract_module
    import sftscope.quality as quality_module
    from sftscope.models import zero_adapter
    from sftscope.store import read_json

    folder = RunFolder(tiny_run)
    checkpoints = folder.checkpoints()
    assert zero_adapter(checkpoints[0]) and zero_adapter(checkpoints[1]) and not zero_adapter(checkpoints[2])
    analyze(tiny_run, SETTINGS)
    computed = load_effects(tiny_run)
    computed_quality = read_json(folder.quality_unit("target", 1, "test"))
    for step in (0, 1):
        for path in folder.unit("target", step, "x").parent.glob("*.parquet"):
            path.unlink()
        for split in ("validation", "test"):
            folder.quality_unit("target", step, split).unlink()
    calls = {"extract": 0, "score": 0}
    extract_many, score_split = extract_module.extract_many, quality_module.score_split

    def counted(name, real):
        def call(*args, **kwargs):
            calls[name] += 1
            return real(*args, **kwargs)
        return call

    monkeypatch.setattr(extract_module, "extract_many", counted("extract", extract_many))
    monkeypatch.setattr(quality_module, "score_split", counted("score", score_split))
    analyze(tiny_run, SETTINGS)
    probes = len(list(folder.unit("target", 2, "x").parent.glob("*.parquet")))
    assert calls == {"extract": -(-probes // SETTINGS.batch_samples), "score": 2}  # one state, not two
    again = load_effects(tiny_run)
    keys = ["model", "step", "sample", "kind", "bitmask"]
    pd.testing.assert_frame_equal(again.sort_values(keys).reset_index(drop=True),
                                  computed.sort_values(keys).reset_index(drop=True))
    zero, one = (again[again["step"] == s].drop(columns="step").sort_values(keys[2:]).reset_index(drop=True)
                 for s in (0, 1))
    pd.testing.assert_frame_equal(zero, one)
    twin = read_json(folder.quality_unit("target", 1, "test"))
    assert twin["step"] == 1 and twin["inputs"] == computed_quality["inputs"]
    assert {k: v for k, v in twin.items() if k != "seconds"} == {k: v for k, v in computed_quality.items()
                                                               if k != "seconds"}


def test_missing_run_folder_is_one_error(tmp_path):
    with pytest.raises(SftscopeError, match="is not an sftscope run folder"):
        analyze(tmp_path, SETTINGS)


def test_a_run_without_a_validation_split_is_explained_in_one_line(tiny_run, tmp_path, capsys, restore_logging):
    import shutil

    from sftscope.cli import main

    run = tmp_path / "old"
    shutil.copytree(tiny_run, run, ignore=shutil.ignore_patterns("analysis", "report", ".sftscope.lock"))
    losses = pd.read_csv(RunFolder(run).losses).rename(columns={"validation_loss": "test_loss"})
    losses.to_csv(RunFolder(run).losses, index=False)  # as sftscope 0.2 wrote it: its rules saw the test loss
    assert main(["analyze", str(run), "--quiet"]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and "no validation split" in err[0] and "train it again" in err[0]
    assert not (run / "analysis").exists()


def test_report_from_the_analysis(tiny_run):
    from sftscope.report import build_report

    analyze(tiny_run, SETTINGS)
    page = build_report(tiny_run)
    text = page.read_text(encoding="utf-8")
    assert text.index('id="recommendation"') < text.index('id="findings"') < text.index("<img")
    assert text.count("data:image/png;base64,") == 7
    assert "http://" not in text and "https://" not in text  # self-contained
    assert {p.name for p in page.parent.glob("*.png")} == {
        "types.png", "orders.png", "quality.png", "utility.png", "losses.png", "fidelity.png", "forgetting.png"}
    assert "<mark" in text


def test_manifest_lists_the_finished_units(tiny_run):
    analyze(tiny_run, SETTINGS)
    manifest = json.loads((tiny_run / "analysis" / "manifest.json").read_text())
    files = list((tiny_run / "analysis" / "effects").rglob("*.parquet"))
    assert manifest["count"] == len(files) == len(manifest["complete_units"])
    assert {(u["model"], u["step"]) for u in manifest["complete_units"]} == {("target", s) for s in (0, 1, 2, 4)}


def test_jobs_hold_whole_batches_of_samples(tmp_path):
    from sftscope.jobs import expected_inputs, plan_jobs
    from sftscope.players import Players
    from sftscope.probes import Probe
    from sftscope.store import checkpoint_digest

    ckpt = tmp_path / "checkpoint-0"
    ckpt.mkdir()
    (ckpt / "adapter_config.json").write_text("{}")
    (ckpt / "adapter_model.safetensors").write_bytes(b"weights")
    probes = [Probe(f"s{i}", "test", "p", "r", Players((), (), ())) for i in range(7)]
    settings = AnalysisSettings(batch_samples=2)
    plan = dict(model_label="target", model_name="m", checkpoints={0: ckpt}, probes=probes, settings=settings)
    jobs = plan_jobs(tmp_path, samples_per_job=3, **plan).jobs
    # batches (s0 s1) (s2 s3) (s4 s5) (s6); 3 samples per job round up to 2 whole batches
    assert [j.samples for j in jobs] == [("s0", "s1", "s2", "s3"), ("s4", "s5", "s6")]
    folder = RunFolder(tmp_path)
    for i in (0, 2, 3):
        inputs = expected_inputs("m", checkpoint_digest(ckpt), probes[i], settings)
        write_unit(folder.unit("target", 0, f"s{i}"), pd.DataFrame({"x": [1]}), inputs)
    # (s2 s3) is done; (s0 s1) is still run whole, so s1 gets the values it would have had
    assert [j.samples for j in plan_jobs(tmp_path, **plan).jobs] == [("s0", "s1", "s4", "s5", "s6")]
    # the same files under another setting, or after the checkpoint changed, are recomputed
    changed = plan_jobs(tmp_path, **{**plan, "settings": AnalysisSettings(batch_samples=2, noise_bound=0.1)})
    assert [j.samples for j in changed.jobs] == [("s0", "s1", "s2", "s3", "s4", "s5", "s6")]
    assert changed.stale == {"noise_bound": 3}
    (ckpt / "adapter_model.safetensors").write_bytes(b"retrained")
    assert plan_jobs(tmp_path, **plan).stale == {"checkpoint": 3}
    with pytest.raises(SftscopeError, match="batch_samples must be >= 1"):
        plan_jobs(tmp_path, **{**plan, "settings": AnalysisSettings(batch_samples=0)})


def test_drift_of_a_run_tuned_to_its_labels(tmp_path, tiny_llama, word_tokenizer):
    """A run tuned until it answers 'joy' to anything: format drift shows it, and KL grows from exactly 0."""
    from sftscope.config import config_from_dict
    from sftscope.train import train

    model_dir = tmp_path / "tiny-model"
    tiny_llama.save_pretrained(model_dir)
    word_tokenizer.save_pretrained(model_dir)
    words = ["what", "is", "the", "capital", "of", "france", "write", "a", "poem", "about", "rain", "today", "so"]
    rows = [{"prompt": " ".join(words[k % 13 :] + words[: k % 13]), "completion": "joy"} for k in range(13)]
    rows += [{"prompt": f"my flight got cancelled again {w}", "completion": "anger"} for w in ("so", "today", "!")]
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    run = train(config_from_dict({
        "output_dir": str(tmp_path / "run"), "model": str(model_dir), "batch_size": 4, "max_steps": 16,
        "checkpoint_every": 8, "learning_rate": 5e-2, "max_length": 64, "lora": {"r": 4, "alpha": 8},
        "data": {"train": str(data), "test_ratio": 0.2, "validation_ratio": 0.2, "max_train_examples": None},
    }))
    settings = AnalysisSettings(samples_per_split=1, n_players=3, general_samples=1, drift_limit=24, allow_fewer=True)
    summary = analyze(run, settings)
    rows = {r["step"]: r for r in summary["drift"]["per_checkpoint"]}
    assert sorted(rows) == summary["checkpoints"] == [0, 1, 2, 4, 8, 16]
    assert rows[0]["kl"]["mean"] == 0.0 and rows[0]["knowledge"]["change"] == 0.0  # step 0 is the base model
    assert rows[0]["format"]["agreement"] == 1.0
    last = rows[16]
    # (a random tiny model's distributions are nearly flat: its KL is small, but it grows from exactly 0)
    assert last["kl"]["mean"] > rows[2]["kl"]["mean"] > 0 and last["kl"]["low"] <= last["kl"]["mean"] <= last["kl"]["high"]
    assert last["examples"][0]["checkpoint"].startswith("joy")  # the table: what it answers instead
    assert last["format"]["label_share"] >= 0.9 > rows[0]["format"]["label_share"]  # a task label to everything
    assert last["format"]["agreement"] < 1.0
    assert all(r["kl"]["prompts"] == 24 and r["knowledge"]["items"] == 24 for r in rows.values())
    # the rules table carries each pick's drift; best_within_drift keeps a checkpoint within its budgets
    within = summary["rules"]["best_within_drift"]
    assert within["step"] is not None and within["label_share"] - rows[0]["format"]["label_share"] <= 0.10
    assert summary["rules"]["last"]["kl"] == last["kl"]["mean"]

    # another general set recomputes the drift, nothing of the task
    stamps = {p: p.stat().st_mtime_ns for p in RunFolder(run).units() if "general-" not in p.name}
    own = tmp_path / "own.jsonl"
    own.write_text("".join(json.dumps({"prompt": f"tell me about the day number {k}"}) + "\n" for k in range(6)),
                   encoding="utf-8")
    again = analyze(run, AnalysisSettings(samples_per_split=1, n_players=3, general_samples=1, drift_limit=24,
                                          allow_fewer=True, general_prompts=str(own)))
    assert all(r["kl"]["prompts"] == 6 for r in again["drift"]["per_checkpoint"])
    assert all(p.stat().st_mtime_ns == t for p, t in stamps.items())  # task units untouched
