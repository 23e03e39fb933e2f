"""Interrupted runs lose nothing; concurrent runs on one folder are refused."""

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from sftscope import SftscopeError
from sftscope.analyze import analyze
from sftscope.config import AnalysisSettings
from sftscope.jobs import ROWS_AGREE
from sftscope.store import LOCK_NAME, load_effects, run_lock

KEYS = ["model", "step", "sample", "kind", "bitmask"]
SCRIPT = (
    "import sys; from sftscope.analyze import analyze; from sftscope.config import AnalysisSettings; "
    "analyze(sys.argv[1], AnalysisSettings(samples_per_split=2, n_players=5))"
)


def _started(command: list[str]) -> subprocess.Popen:
    """A child process once it runs its own program: between fork and exec /proc shows the parent's, or nothing."""
    proc = subprocess.Popen(command)
    deadline = time.monotonic() + 30
    while Path(f"/proc/{proc.pid}/cmdline").read_bytes().split(b"\0")[:len(command)] != [c.encode() for c in command]:
        if time.monotonic() > deadline:
            proc.kill()
            raise TimeoutError(f"{command} did not start")
        time.sleep(0.01)
    return proc


def test_concurrent_use_is_refused(tmp_path):
    with run_lock(tmp_path):
        holder = _started([sys.executable, "-c", "import time; time.sleep(30)"])
        try:
            (tmp_path / LOCK_NAME).write_text(str(holder.pid))  # pretend another live process holds it
            with pytest.raises(SftscopeError, match=f"in use by another sftscope process \\(pid {holder.pid}[:)]"):
                with run_lock(tmp_path):
                    pass
        finally:
            holder.kill()
            holder.wait()
        (tmp_path / LOCK_NAME).write_text(str(os.getpid()))
    assert not (tmp_path / LOCK_NAME).exists()


def test_stale_lock_is_taken_over(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / LOCK_NAME).write_text(str(dead.pid))
    with run_lock(tmp_path):
        assert (tmp_path / LOCK_NAME).read_text().split()[0] == str(os.getpid())


def test_a_lock_naming_another_live_process_is_taken_over(tmp_path):
    """A pid reused by a process that is not sftscope (pid 1 in a container, say) does not hold the lock."""
    import shutil

    other = _started([shutil.which("sleep"), "30"])  # alive, and not sftscope
    python = _started([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        for content in (str(other.pid), f"{python.pid} 1"):  # a bare pid; a pid whose start time is not the holder's
            (tmp_path / LOCK_NAME).write_text(content)
            with run_lock(tmp_path):
                assert (tmp_path / LOCK_NAME).read_text().split()[0] == str(os.getpid())
    finally:
        for proc in (other, python):
            proc.kill()
            proc.wait()


def test_a_lock_being_taken_is_not_stolen(tmp_path):
    """An empty, fresh lock file is another process between creating it and writing its pid."""
    (tmp_path / LOCK_NAME).write_text("")
    with pytest.raises(SftscopeError, match="being taken by another sftscope process"):
        with run_lock(tmp_path):
            pass
    old = time.time() - 60
    os.utime(tmp_path / LOCK_NAME, (old, old))  # an empty lock left by a process killed in that gap
    with run_lock(tmp_path):
        assert (tmp_path / LOCK_NAME).read_text().split()[0] == str(os.getpid())


def test_killed_at_random_points_then_resumed_gives_the_clean_rows(tiny_run, tmp_path):
    import shutil

    settings = AnalysisSettings(samples_per_split=2, n_players=5)
    clean_dir = tmp_path / "clean"
    shutil.copytree(tiny_run, clean_dir, ignore=shutil.ignore_patterns("analysis", "report"))
    analyze(clean_dir, settings)
    clean = load_effects(clean_dir).sort_values(KEYS).reset_index(drop=True)

    killed_dir = tmp_path / "killed"
    shutil.copytree(tiny_run, killed_dir, ignore=shutil.ignore_patterns("analysis", "report"))
    rng = random.Random(7)
    kills = 0
    for _ in range(4):
        proc = subprocess.Popen([sys.executable, "-c", SCRIPT, str(killed_dir)])
        time.sleep(rng.uniform(3.0, 8.0))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.wait()
    finished = subprocess.run([sys.executable, "-c", SCRIPT, str(killed_dir)], capture_output=True, text=True)
    assert finished.returncode == 0, finished.stderr[-1500:]
    assert kills >= 1  # at least one run really died mid-way
    resumed = load_effects(killed_dir).sort_values(KEYS).reset_index(drop=True)
    pd.testing.assert_frame_equal(resumed, clean, check_exact=False, **ROWS_AGREE)
    assert not list(killed_dir.rglob("*.tmp"))
