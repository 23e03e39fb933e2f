"""Extraction jobs on a local Ray cluster: same rows as the serial path, and a killed worker is retried."""

import os
import shutil
import signal
import threading
import time

import pandas as pd
import pytest

from sftscope.analyze import analyze
from sftscope.config import AnalysisSettings
from sftscope.jobs import ROWS_AGREE
from sftscope.store import load_effects

ray = pytest.importorskip("ray", reason="pip install 'ray[default]'")

KEYS = ["model", "step", "sample", "kind", "bitmask"]
SETTINGS = AnalysisSettings(samples_per_split=2, n_players=5)


def fresh_copy(run, where):
    shutil.copytree(run, where, ignore=shutil.ignore_patterns("analysis", "report", ".sftscope.lock"))
    return where


def job_worker_pids():
    import psutil

    pids = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        cmd = " ".join(proc.info["cmdline"] or [])
        if "ray::_job_main" in cmd:
            pids.append(proc.info["pid"])
    return pids


@pytest.fixture(scope="module")
def serial_rows(tiny_run, tmp_path_factory):
    run = fresh_copy(tiny_run, tmp_path_factory.mktemp("serial") / "run")
    analyze(run, SETTINGS)
    return load_effects(run).sort_values(KEYS).reset_index(drop=True)


def test_ray_local_cluster_gives_the_serial_rows(tiny_run, tmp_path, serial_rows):
    run = fresh_copy(tiny_run, tmp_path / "run")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        analyze(run, SETTINGS, ray_address="local", samples_per_job=2)
    finally:
        ray.shutdown()
    rows = load_effects(run).sort_values(KEYS).reset_index(drop=True)
    pd.testing.assert_frame_equal(rows, serial_rows, check_exact=False, **ROWS_AGREE)


def test_killed_worker_is_retried(tiny_run, tmp_path, serial_rows):
    run = fresh_copy(tiny_run, tmp_path / "run")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    killed = []

    def killer():
        deadline = time.time() + 120
        while time.time() < deadline and not killed:
            pids = job_worker_pids()
            if pids:
                time.sleep(0.5)  # let it get into the job
                os.kill(pids[0], signal.SIGKILL)
                killed.append(pids[0])
            time.sleep(0.1)

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    try:
        analyze(run, SETTINGS, ray_address="local", samples_per_job=1)
    finally:
        ray.shutdown()
    thread.join(timeout=5)
    assert killed, "no worker was running a job to kill"
    rows = load_effects(run).sort_values(KEYS).reset_index(drop=True)
    pd.testing.assert_frame_equal(rows, serial_rows, check_exact=False, **ROWS_AGREE)  # complete and duplicate-free
