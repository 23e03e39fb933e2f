"""The HTML report opened in a real headless Chromium: it renders, images load, no console errors."""

import json
import os
import shutil
import subprocess
import sys
import time

import pytest

from sftscope.analyze import analyze
from sftscope.config import AnalysisSettings
from sftscope.report import build_report

SETTINGS = AnalysisSettings(samples_per_split=2, n_players=4)
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None and not os.environ.get("CI"), reason="needs Debian chromium (installed by .ci/run)"
)


def check_in_browser(page_path, n_images=7):  # six of the paper's kind and the learning-forgetting curve
    from playwright.sync_api import sync_playwright

    errors, requests = [], []
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                  "--disable-sync", "--no-first-run"],
        )
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.on("request", lambda r: requests.append(r.url))
        page.goto(page_path.as_uri())
        page.wait_for_load_state("load")
        widths = page.eval_on_selector_all("img", "imgs => imgs.map(i => i.naturalWidth)")
        recommendation = page.inner_text("#recommendation")
        page.screenshot(path=str(page_path.parent / "screenshot.png"))
        browser.close()
    assert errors == []
    assert len(widths) == n_images and all(w > 100 for w in widths)
    assert "Recommended checkpoint" in recommendation
    assert all(u.startswith(("file://", "data:")) for u in requests)  # nothing fetched from outside


@needs_chromium
def test_report_renders_in_chromium(tiny_run):
    analyze(tiny_run, SETTINGS)
    check_in_browser(build_report(tiny_run))


@pytest.mark.integration
@needs_chromium
def test_quick_demo_end_to_end(tmp_path):
    """``sftscope demo --quick`` on the real embedded models, offline, then its report in Chromium."""
    out = tmp_path / "demo"
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "sftscope.cli", "demo", "--quick", "--quiet", "--out", str(out)],
        capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=1500,
    )
    print(f"demo --quick took {time.perf_counter() - start:.0f} s")
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Recommended checkpoint: step" in done.stdout
    summary = json.loads((out / "summary.json").read_text())
    assert summary["recommended_step"] in summary["checkpoints"]
    assert {"recommended_step", "stage_boundary_step", "min_test_loss_step", "findings", "settings"} <= set(summary)
    assert len(list((out / "target" / "report").glob("*.png"))) == 7
    assert summary["drift"]["per_checkpoint"] and "costs the model outside its task" in done.stdout
    check_in_browser(out / "target" / "report" / "index.html")
