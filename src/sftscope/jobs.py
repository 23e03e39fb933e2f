"""Extraction work cut into jobs: one checkpoint and a batch of probe samples each.

A job loads its checkpoint once, extracts its samples and writes every
finished unit to the run folder itself, so the serial path, a resumed run and
a Ray cluster (``distributed.py``) all produce the same files.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .config import AnalysisSettings
from .errors import SftscopeError
from .probes import Probe
from .store import RunFolder, write_unit


@dataclass(frozen=True)
class Job:
    """One unit of distributable work: a model's checkpoint and a batch of probe samples."""

    model_label: str
    model_name: str
    step: int
    checkpoint: str
    samples: tuple[str, ...]


def plan_jobs(
    run_dir, *, model_label: str, model_name: str, checkpoints: dict[int, Path], probes: list[Probe],
    samples_per_job: int | None = None, batch_samples: int = 1,
) -> list[Job]:
    """Jobs for every checkpoint with missing units; ``samples_per_job=None`` puts a checkpoint's all in one.

    Samples go in fixed batches of ``batch_samples`` (in probe order) that are
    never split across jobs: a batch is always evaluated whole, so its values
    are bit-for-bit the same however the work is cut or resumed.
    """
    if batch_samples < 1:
        raise SftscopeError(f"analysis.batch_samples must be >= 1, got {batch_samples}")
    folder = RunFolder(run_dir)
    order = [p.sample for p in probes]
    batches = [tuple(order[k : k + batch_samples]) for k in range(0, len(order), batch_samples)]
    jobs = []
    for step, path in checkpoints.items():
        pending = [b for b in batches if any(not folder.unit(model_label, step, s).exists() for s in b)]
        per_job = max(1, -(-(samples_per_job or len(order)) // batch_samples))  # whole batches per job
        for k in range(0, len(pending), per_job):
            samples = tuple(s for b in pending[k : k + per_job] for s in b)
            jobs.append(Job(model_label, model_name, step, str(path), samples))
    return jobs


def run_job(
    run_dir, job: Job, probes: dict[str, Probe], settings: AnalysisSettings, *, base_model=None, tokenizer=None,
    on_unit: Callable[[], None] | None = None,
) -> int:
    """Load the job's checkpoint once, extract its batches, write each missing unit itself; returns units written."""
    from .extract import Request, extract_many  # noqa: PLC0415
    from .models import load_checkpoint, load_model_and_tokenizer  # noqa: PLC0415

    folder = RunFolder(run_dir)
    if base_model is None:
        base_model, tokenizer = load_model_and_tokenizer(job.model_name, dtype="float32")
    model = load_checkpoint(base_model, job.checkpoint)
    written = 0
    for k in range(0, len(job.samples), settings.batch_samples):
        batch = job.samples[k : k + settings.batch_samples]
        targets = {s: folder.unit(job.model_label, job.step, s) for s in batch}
        missing = {s for s, t in targets.items() if not t.exists()}  # a retried job skips finished batches
        if missing:  # the whole batch is evaluated, so its values do not depend on what was done before
            requests = [
                Request(probes[s].prompt, probes[s].response, probes[s].players,
                        context=f"sample {s}, {job.model_label} step {job.step}")
                for s in batch
            ]
            results = extract_many(
                model, tokenizer, requests, baseline=settings.baseline, noise_bound=settings.noise_bound,
                tau=settings.tau, engine=settings.engine, batch_samples=settings.batch_samples,
            )
            for sample, result in zip(batch, results):
                if sample in missing:
                    frame = result.to_dataframe().assign(
                        sample=sample, split=probes[sample].split, step=job.step, model=job.model_label
                    )
                    write_unit(targets[sample], frame)
                    written += 1
        if on_unit:
            for _ in batch:
                on_unit()
    return written


def extract_run(
    run_dir,
    *,
    model_label: str,
    model_name: str,
    base_model,
    tokenizer,
    checkpoints: dict[int, Path],
    probes: list[Probe],
    settings: AnalysisSettings,
    progress: Callable | None = None,
) -> int:
    """Extract every missing unit of one model in this process; returns how many were computed."""
    jobs = plan_jobs(
        run_dir, model_label=model_label, model_name=model_name, checkpoints=checkpoints, probes=probes,
        batch_samples=settings.batch_samples,
    )
    by_id = {p.sample: p for p in probes}
    bar = progress(total=sum(len(j.samples) for j in jobs), desc=f"extract {model_label}") if progress and jobs else None
    computed = sum(
        run_job(run_dir, job, by_id, settings, base_model=base_model, tokenizer=tokenizer,
                on_unit=bar.update if bar else None)
        for job in jobs
    )
    if bar:
        bar.close()
    return computed
