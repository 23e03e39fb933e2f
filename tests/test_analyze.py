import json

import pandas as pd
import pytest

from sftscope import SftscopeError
from sftscope.analyze import AnalysisSettings, analyze, load_effects, unit_path


SETTINGS = AnalysisSettings(samples_per_split=2, n_players=4)


def test_analysis_resumes_to_the_same_rows(tiny_run, monkeypatch):
    import sftscope.extract as extract_module

    summary = analyze(tiny_run, SETTINGS)
    clean = load_effects(tiny_run).sort_values(["model", "step", "sample", "kind", "bitmask"]).reset_index(drop=True)
    assert sorted(clean["step"].unique()) == [0, 1, 2, 4]
    assert clean.groupby(["step", "sample"]).size().eq(2 * 16).all()
    assert summary["recommended_step"] in summary["checkpoints"]
    assert len(summary["findings"]) == 5

    # crash after two more units, then resume: same rows, nothing duplicated
    for path in list(unit_path(tiny_run, "target", 0, "x").parents[1].glob("step-*/*.parquet"))[:5]:
        path.unlink()
    real = extract_module.extract_interactions
    calls = {"n": 0}

    def crashing(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] > 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(extract_module, "extract_interactions", crashing)
    with pytest.raises(KeyboardInterrupt):
        analyze(tiny_run, SETTINGS)
    monkeypatch.setattr(extract_module, "extract_interactions", real)
    analyze(tiny_run, SETTINGS)
    again = load_effects(tiny_run).sort_values(["model", "step", "sample", "kind", "bitmask"]).reset_index(drop=True)
    pd.testing.assert_frame_equal(again, clean)
    assert not list(tiny_run.glob("analysis/**/*.tmp"))


def test_missing_run_folder_is_one_error(tmp_path):
    with pytest.raises(SftscopeError, match="config file not found"):
        analyze(tmp_path, SETTINGS)


def test_report_from_the_analysis(tiny_run):
    from sftscope.report import build_report

    analyze(tiny_run, SETTINGS)
    page = build_report(tiny_run)
    text = page.read_text(encoding="utf-8")
    assert text.index('id="recommendation"') < text.index('id="findings"') < text.index("<img")
    assert text.count("data:image/png;base64,") == 6
    assert "http://" not in text and "https://" not in text  # self-contained
    assert {p.name for p in page.parent.glob("*.png")} == {
        "types.png", "orders.png", "quality.png", "utility.png", "losses.png", "fidelity.png"}
    assert "<mark" in text


def test_manifest_lists_the_finished_units(tiny_run):
    analyze(tiny_run, SETTINGS)
    manifest = json.loads((tiny_run / "analysis" / "manifest.json").read_text())
    files = list((tiny_run / "analysis" / "effects").rglob("*.parquet"))
    assert manifest["count"] == len(files) == len(manifest["complete_units"])
    assert {(u["model"], u["step"]) for u in manifest["complete_units"]} == {("target", s) for s in (0, 1, 2, 4)}
