"""Extraction jobs: serial path against a local Ray cluster, same jobs, one run.

    python benchmarks/ray_extract.py RUN_DIR [--workers 2] [--samples 2] [--players 6] [--checkpoints 4]

RUN_DIR is a finished SFT run (e.g. sftscope-demo/target). The analysis is
done twice into fresh copies of the run (serial, then Ray with ``--workers``
CPU workers, one checkpoint and ``--samples-per-job`` samples per job); rows
are compared and the wall-time ratio printed. On one machine the workers share
its cores, so the ratio shows overhead and core use, not multi-machine scaling.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch

from sftscope.analyze import analyze
from sftscope.config import AnalysisSettings
from sftscope.store import RunFolder, load_effects

KEYS = ["model", "step", "sample", "kind", "bitmask"]


def copy_run(run: Path, where: Path, keep_steps: list[int]) -> Path:
    def ignore(folder, names):
        drop = {"analysis", "report", ".sftscope.lock"}
        if Path(folder) == run:
            drop |= {n for n in names if n.startswith("checkpoint-") and int(n.split("-")[1]) not in keep_steps}
        return drop & set(names)

    shutil.copytree(run, where, ignore=ignore)
    return where


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("run_dir")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--samples", type=int, default=2, help="probe samples per split")
    parser.add_argument("--players", type=int, default=6)
    parser.add_argument("--checkpoints", type=int, default=4)
    parser.add_argument("--samples-per-job", type=int, default=2)
    args = parser.parse_args()
    import ray

    run = Path(args.run_dir).resolve()
    steps = list(RunFolder(run).checkpoints())
    keep = sorted(set(steps[:: max(1, len(steps) // args.checkpoints)][: args.checkpoints]) | {steps[0]})
    settings = AnalysisSettings(samples_per_split=args.samples, n_players=args.players)
    tmp = Path(tempfile.mkdtemp())
    serial_run = copy_run(run, tmp / "serial", keep)
    ray_run = copy_run(run, tmp / "ray", keep)
    # the same probes (players are chosen once, on step 0) in both copies
    analyze(serial_run, AnalysisSettings(samples_per_split=args.samples, n_players=args.players))
    probes = serial_run / "analysis" / "probes.json"
    shutil.rmtree(serial_run / "analysis" / "effects")
    (ray_run / "analysis").mkdir()
    shutil.copy(probes, ray_run / "analysis" / "probes.json")

    torch.set_num_threads(2)
    t0 = time.perf_counter()
    analyze(serial_run, settings)
    t_serial = time.perf_counter() - t0

    ray.init(num_cpus=args.workers, include_dashboard=False, log_to_driver=False)
    t0 = time.perf_counter()
    analyze(ray_run, settings, ray_address="local", samples_per_job=args.samples_per_job)
    t_ray = time.perf_counter() - t0
    ray.shutdown()

    a = load_effects(serial_run).sort_values(KEYS).reset_index(drop=True)
    b = load_effects(ray_run).sort_values(KEYS).reset_index(drop=True)
    # Same units and keys; values agree to float32 noise (1-thread workers sum in another order than 2 threads).
    pd.testing.assert_frame_equal(a[KEYS], b[KEYS])
    value_diff = float((a["value"] - b["value"]).abs().max())
    units = a.groupby(["model", "step", "sample"]).ngroups
    print(f"{units} units ({len(keep)} checkpoints x {2 * args.samples} samples, n = {args.players}); same rows, "
          f"max |v(S)| difference {value_diff:.1e}")
    print(f"serial: {t_serial:.1f} s   ray ({args.workers} CPU workers, {args.samples_per_job} samples/job): "
          f"{t_ray:.1f} s   ratio serial/ray: {t_serial / t_ray:.2f}x")
    shutil.rmtree(tmp)


if __name__ == "__main__":
    main()
