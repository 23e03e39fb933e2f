"""The promise of ``pinned_threads``: the same rows whatever thread count the process starts with.

A cluster worker starts with ``OMP_NUM_THREADS=1``; the serial path runs with
the machine's default. Both must extract on ``analysis.threads`` threads, so a
subprocess started with one thread gives this process's rows (to the
tolerance ``ROWS_AGREE`` states; bit-identical on the machines measured).
The subprocess also records the thread count inside every forward pass: if
the pinning is removed, that count is 1 and the test fails even on a CPU
whose sums happen not to depend on it.
"""

import json
import os
import shutil
import subprocess
import sys

import pandas as pd

from sftscope.analyze import analyze
from sftscope.config import AnalysisSettings
from sftscope.jobs import ROWS_AGREE
from sftscope.store import load_effects

KEYS = ["model", "step", "sample", "kind", "bitmask"]
SETTINGS = AnalysisSettings(samples_per_split=2, n_players=5, threads=2, drift=False)

CHILD = """
import json, sys, torch
from torch.nn.modules.module import register_module_forward_pre_hook
from sftscope.analyze import analyze
from sftscope.config import AnalysisSettings

seen = set()
register_module_forward_pre_hook(lambda module, args: seen.add(torch.get_num_threads()))
analyze(sys.argv[1], AnalysisSettings(samples_per_split=2, n_players=5, threads=2, drift=False))
print(json.dumps({"start": int(sys.argv[2]), "seen": sorted(seen)}))
"""


def fresh_copy(run, where):
    shutil.copytree(run, where, ignore=shutil.ignore_patterns("analysis", "report", ".sftscope.lock"))
    return where


def test_one_thread_worker_gives_the_rows_of_this_process(tiny_run, tmp_path):
    here = fresh_copy(tiny_run, tmp_path / "here")
    analyze(here, SETTINGS)
    there = fresh_copy(tiny_run, tmp_path / "there")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
    child = subprocess.run([sys.executable, "-c", CHILD, str(there), "1"], env=env, capture_output=True,
                           text=True, timeout=600, check=False)
    assert child.returncode == 0, child.stderr[-2000:]
    report = json.loads(child.stdout.strip().splitlines()[-1])
    assert report["seen"] == [SETTINGS.threads], f"forward passes ran on {report['seen']} threads"
    rows_here = load_effects(here).sort_values(KEYS).reset_index(drop=True)
    rows_there = load_effects(there).sort_values(KEYS).reset_index(drop=True)
    assert len(rows_here) > 0
    pd.testing.assert_frame_equal(rows_here, rows_there, check_exact=False, **ROWS_AGREE)
