"""Fan extraction jobs out over a Ray cluster (many GPUs or machines).

A job is one model checkpoint and a batch of probe samples: the worker loads
the checkpoint once, extracts its samples and writes each unit's Parquet file
itself, in the run folder's usual layout, so resume and the serial path keep
working. A job whose worker dies or raises is retried (``max_retries``); jobs
that still fail are reported together, never dropped. The run folder must be
reachable from every worker (a shared filesystem on a multi-machine cluster).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Callable

from .errors import SftscopeError
from .jobs import ModelWork, explain, plan_jobs, run_job

log = logging.getLogger(__name__)

_MODELS: dict[str, tuple] = {}  # per worker process: base models loaded once


def _job_main(run_dir: str, job, probes, settings, quality) -> int:
    """Runs inside a Ray worker."""
    import torch  # noqa: PLC0415

    from .models import load_model_and_tokenizer  # noqa: PLC0415

    if job.model_name not in _MODELS:
        device = "cuda" if torch.cuda.is_available() else "cpu"
        _MODELS[job.model_name] = load_model_and_tokenizer(job.model_name, dtype=settings.dtype, device=device)
    base, tokenizer = _MODELS[job.model_name]
    return run_job(run_dir, job, {p.sample: p for p in probes}, settings, base_model=base, tokenizer=tokenizer,
                   quality=quality)


STATUS_EVERY_S = 60.0


def _free(ray) -> str:
    free = ray.available_resources()
    return f"{free.get('CPU', 0):g} CPU, {free.get('GPU', 0):g} GPU"


def _check_fits(ray, cpus: float, gpus: float) -> None:
    """Some node of the cluster can run one job, or Ray would keep it waiting forever without a word."""
    nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
    if not any(n.get("CPU", 0) >= cpus and n.get("GPU", 0) >= gpus for n in nodes):
        largest = max((n.get("CPU", 0) for n in nodes), default=0)
        raise SftscopeError(f"each extraction job asks Ray for {cpus:g} CPU(s) (analysis.threads) and {gpus:g} GPU(s), "
                            f"but no node of the cluster has that many (the largest has {largest:g} CPU(s)): lower "
                            "analysis.threads or --gpus-per-job")


def extract_with_ray(
    run_dir: Path,
    units: list[ModelWork],
    probes,
    settings,
    *,
    address: str = "local",
    samples_per_job: int | None = None,
    num_gpus: float = 0,
    num_cpus: float | None = None,
    max_retries: int = 3,
    stall_s: float = 1800.0,
    progress: Callable | None = None,
    say: Callable[[str], None] | None = None,
) -> int:
    """Run every missing unit (and quality score) of ``units`` as Ray jobs; returns the number of units written.

    Each job asks Ray for ``settings.threads`` CPUs (and runs on that many threads:
    the rows equal the serial path's). A cluster with no node that large is an
    error at once; a cluster on which no job finishes for ``stall_s`` seconds is
    an error then, with a status line every minute before.
    """
    try:
        import ray  # noqa: PLC0415
    except ImportError:
        raise SftscopeError("--ray needs Ray: pip install 'ray[default]'") from None

    jobs, qualities = [], {}
    for work in units:
        plan = plan_jobs(run_dir, model_label=work.label, model_name=work.name, checkpoints=work.checkpoints,
                         probes=work.own(probes), settings=settings, samples_per_job=samples_per_job, quality=work.quality)
        note = explain(plan, work.label)
        if note:
            (say or log.warning)(note)
        jobs += plan.jobs
        qualities[work.label] = work.quality
    if not jobs:
        return 0
    started_here = False
    if not ray.is_initialized():
        ray.init(address=None if address == "local" else address, include_dashboard=False, log_to_driver=False,
                 logging_level=logging.WARNING)
        started_here = True
    try:
        cpus = num_cpus or settings.threads
        _check_fits(ray, cpus, num_gpus)
        remote = ray.remote(num_cpus=cpus, num_gpus=num_gpus, max_retries=max_retries,
                            retry_exceptions=True)(_job_main)
        probes_ref = ray.put(list(probes))
        pending = {remote.remote(str(run_dir), job, probes_ref, settings, qualities[job.model_label]): job
                   for job in jobs}
        bar = progress(total=len(jobs), desc="extraction jobs (ray)") if progress else None
        written, failures = 0, []
        quiet_since = time.monotonic()
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1, timeout=STATUS_EVERY_S)
            if not done:  # nothing finished for a while: say so, and give up on a cluster that does no work
                waited = time.monotonic() - quiet_since
                note = (f"ray: no extraction job finished in the last {waited:.0f} s ({len(jobs) - len(pending)} of "
                        f"{len(jobs)} done; free on the cluster: {_free(ray)})")
                if waited >= stall_s:
                    raise SftscopeError(f"{note}: giving up after {stall_s:.0f} s (are the workers dying? the Ray "
                                        "logs in /tmp/ray/session_latest/logs say why); finished units are kept")
                (say or log.warning)(note)
                continue
            quiet_since = time.monotonic()
            job = pending.pop(done[0])
            try:
                written += ray.get(done[0])
            except Exception as exc:  # noqa: BLE001 - reported below with the job
                failures.append(f"{job.model_label} step {job.step} samples {','.join(job.samples)}: "
                                f"{type(exc).__name__}: {str(exc).strip().splitlines()[-1] if str(exc).strip() else ''}")
            if bar:
                bar.update(1)
        if bar:
            bar.close()
        if failures:
            raise SftscopeError(f"{len(failures)} extraction job(s) failed after {max_retries} retries: "
                                + "; ".join(failures))
        return written
    finally:
        if started_here:
            ray.shutdown()
