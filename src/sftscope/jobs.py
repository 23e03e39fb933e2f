"""Extraction work cut into jobs: one checkpoint and a batch of probe samples each, plus its task quality.

A job loads its checkpoint once, extracts its samples and writes every
finished unit to the run folder itself, so the serial path, a resumed run and
a Ray cluster (``distributed.py``) all produce the same files.

Every stored result carries the inputs it was computed from (the checkpoint's
content hash, the model, the sample and its players, the settings that change
numbers). A unit whose stored inputs differ from today's, or that cannot be
read, is planned again; nothing is reused under other settings.
"""

from __future__ import annotations

import contextlib
import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Sequence

from .config import AnalysisSettings
from .data import Pair
from .errors import SftscopeError
from .probes import Probe
from .store import RunFolder, changed_keys, checkpoint_digest, digest, read_json, unit_inputs, write_json, write_unit

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Twin:
    """Another checkpoint of the same model state as a job's own: its results are written from the same work."""

    step: int
    checkpoint: str
    checkpoint_digest: str


@dataclass(frozen=True)
class Job:
    """One unit of distributable work: a model's checkpoint, a batch of probe samples, and maybe its quality.

    ``twins``: checkpoints that are the same model state (zero adapters, all the base model), whose units and
    quality are written from this job's computation instead of being computed again.
    """

    model_label: str
    model_name: str
    step: int
    checkpoint: str
    samples: tuple[str, ...]
    checkpoint_digest: str = ""
    quality: tuple[str, ...] = ()  # also score the checkpoint on these splits (validation, test)
    twins: tuple[Twin, ...] = ()

    def targets(self) -> list[Twin]:
        """Every checkpoint this job writes: its own, then its twins."""
        return [Twin(self.step, self.checkpoint, self.checkpoint_digest), *self.twins]


@dataclass(frozen=True)
class QualityTask:
    """What a checkpoint's task quality is measured on: one whole split and the label set (None: open-ended).

    The target is scored on ``validation`` (what the stopping rules see) and
    on ``test`` (what the report shows and no rule sees).
    """

    pairs: tuple[Pair, ...]
    labels: tuple[str, ...] | None
    dtype: str = "float32"
    split: str = "test"

    def inputs(self, model_name: str, checkpoint: str) -> dict:
        return as_stored({"checkpoint": checkpoint, "model": model_name, "labels": self.labels, "dtype": self.dtype,
                          "split": digest([asdict(p) for p in self.pairs]), "scoring": "whole-label log-likelihood v2"})


def as_stored(inputs: dict) -> dict:
    """Inputs as they read back from JSON (tuples become lists), so stored and wanted compare equal."""
    return json.loads(json.dumps(inputs))


def unit_settings(settings: AnalysisSettings) -> dict:
    """The analysis settings that change a unit's numbers (tau and the rules only change the summary)."""
    return {"baseline": settings.baseline, "noise_bound": settings.noise_bound, "engine": settings.engine,
            "dtype": settings.dtype, "whole_prompt_masks": settings.whole_prompt_masks, "whole_prompt_seed": settings.seed}


def expected_inputs(model_name: str, checkpoint: str, probe: Probe, settings: AnalysisSettings) -> dict:
    return as_stored({"checkpoint": checkpoint, "model": model_name, "sample": probe.sample, "prompt": probe.prompt,
                      "response": probe.response, "players": asdict(probe.players), **unit_settings(settings)})


@dataclass(frozen=True)
class ModelWork:
    """One model's share of an analysis: its label, its name or path, its checkpoints, and the quality tasks."""

    label: str
    name: str
    checkpoints: dict[int, Path]
    quality: tuple[QualityTask, ...] = ()
    splits: tuple[str, ...] | None = None  # the probe splits it is extracted on (None: all)

    def own(self, probes: list[Probe]) -> list[Probe]:
        """The probes this model is extracted on."""
        return [p for p in probes if self.splits is None or p.split in self.splits]


@dataclass
class Plan:
    """The jobs of a model and why units are (re)computed."""

    jobs: list[Job]
    stale: dict[str, int]  # input name -> units recomputed because it changed


def plan_jobs(
    run_dir, *, model_label: str, model_name: str, checkpoints: dict[int, Path], probes: list[Probe],
    settings: AnalysisSettings | None = None, samples_per_job: int | None = None, quality: tuple[QualityTask, ...] = (),
) -> Plan:
    """Jobs for every checkpoint with missing or stale units; ``samples_per_job=None`` puts a checkpoint's all in one.

    Samples go in fixed batches of ``settings.batch_samples`` (in probe order)
    that are never split across jobs: a batch is always evaluated whole, so its
    values are bit-for-bit the same however the work is cut or resumed.
    ``quality``: also plan each checkpoint's task-quality scores on these splits (the target model).
    """
    settings = settings or AnalysisSettings()
    batch_samples = settings.batch_samples
    if batch_samples < 1:
        raise SftscopeError(f"analysis.batch_samples must be >= 1, got {batch_samples}")
    folder = RunFolder(run_dir)
    order = [p.sample for p in probes]
    by_id = {p.sample: p for p in probes}
    batches = [tuple(order[k : k + batch_samples]) for k in range(0, len(order), batch_samples)]
    per_job = max(1, -(-(samples_per_job or len(order) or 1) // batch_samples))  # whole batches per job
    jobs, stale = [], {}
    digests = {step: checkpoint_digest(path) for step, path in checkpoints.items()}
    twins_of = same_state_steps(checkpoints)
    twin_steps = {twin for twins in twins_of.values() for twin in twins}

    def current(step: int, sample: str) -> bool:
        unit = folder.unit(model_label, step, sample)
        if not unit.exists():
            return False
        stored = unit_inputs(unit)
        differs = changed_keys(stored, expected_inputs(model_name, digests[step], by_id[sample], settings))
        for key in (["unreadable file"] if stored is None else differs):
            stale[key] = stale.get(key, 0) + 1
        return not differs

    for step, path in checkpoints.items():
        if step in twin_steps:
            continue  # written by the job of the first checkpoint of its state
        group = [step, *twins_of.get(step, [])]
        pending = [b for b in batches if not all([current(at, s) for at in group for s in b])]  # every unit counted
        score = tuple(t.split for t in quality
                      if not all([quality_current(folder, model_label, at, model_name, digests[at], t) for at in group]))
        twins = tuple(Twin(at, str(checkpoints[at]), digests[at]) for at in group[1:])
        chunks = [tuple(s for b in pending[k : k + per_job] for s in b) for k in range(0, len(pending), per_job)]
        if score and not chunks:
            chunks = [()]
        for k, samples in enumerate(chunks):
            jobs.append(Job(model_label, model_name, step, str(path), samples, digests[step],
                            quality=score if k == 0 else (), twins=twins))
    return Plan(jobs, stale)


def same_state_steps(checkpoints: dict[int, Path]) -> dict[int, list[int]]:
    """Checkpoints that are one model state: the first zero adapter -> the later ones (all of them the base model).

    A checkpoint whose adapter cannot be read is left on its own (loading it later says what is wrong).
    """
    from safetensors import SafetensorError  # noqa: PLC0415

    from .models import zero_adapter  # noqa: PLC0415

    zeros = []
    for step, path in sorted(checkpoints.items()):
        try:
            if zero_adapter(path):
                zeros.append(step)
        except (SafetensorError, OSError, ValueError, RuntimeError):
            continue
    return {zeros[0]: zeros[1:]} if len(zeros) > 1 else {}


def quality_current(folder: RunFolder, model_label: str, step: int, model_name: str, ckpt: str,
                    task: QualityTask) -> bool:
    """Whether a checkpoint's stored quality was computed from these inputs."""
    try:
        stored = read_json(folder.quality_unit(model_label, step, task.split))
    except (OSError, ValueError):  # missing, or a file that cannot be read: score again
        return False
    return isinstance(stored, dict) and stored.get("inputs") == task.inputs(model_name, ckpt)


# What sftscope promises of one analysis's rows computed in two processes on one machine (serial, resumed after
# a kill, on Ray, started with another thread count): equal to this relative and absolute tolerance (absolute in
# the units of the model output, log-probabilities or logits), as numpy.isclose reads them. On the machines
# measured (Intel and AMD CPUs, 2 cores) they were bit-identical; a CPU whose kernels depend on memory
# alignment may move the last digits, and the tests allow that much. Across CPUs or on a GPU nothing finer than
# the model's floating-point precision is promised.
ROWS_AGREE = {"rtol": 1e-5, "atol": 1e-5}


@contextlib.contextmanager
def pinned_threads(count: int):
    """Run on exactly ``count`` CPU threads (torch and the BLAS under numpy/scipy), whatever the process's default.

    Float sums depend on how a reduction is cut across threads, so a Ray
    worker (which Ray starts with ``OMP_NUM_THREADS=1``) and the serial path
    would differ in the last digits, and the sparse solver can then move mass
    between small interactions. With the same count everywhere the rows agree
    to ``ROWS_AGREE`` on one machine (``tests/test_determinism.py``).
    """
    import torch  # noqa: PLC0415
    from threadpoolctl import threadpool_limits  # noqa: PLC0415

    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        with threadpool_limits(limits=count):
            yield
    finally:
        torch.set_num_threads(before)


def run_job(
    run_dir, job: Job, probes: dict[str, Probe], settings: AnalysisSettings, *, base_model=None, tokenizer=None,
    quality: tuple[QualityTask, ...] = (), on_unit: Callable[[], None] | None = None,
) -> int:
    """Load the job's checkpoint once, score it and extract its batches, writing each result (for its twins too);
    returns units written.

    Runs on ``settings.threads`` CPU threads (see :func:`pinned_threads`).
    """
    with pinned_threads(settings.threads):
        return _run_job(run_dir, job, probes, settings, base_model=base_model, tokenizer=tokenizer, quality=quality,
                        on_unit=on_unit)


def _run_job(
    run_dir, job: Job, probes: dict[str, Probe], settings: AnalysisSettings, *, base_model=None, tokenizer=None,
    quality: tuple[QualityTask, ...] = (), on_unit: Callable[[], None] | None = None,
) -> int:
    from .extract import Request, extract_many  # noqa: PLC0415
    from .models import load_checkpoint, load_model_and_tokenizer  # noqa: PLC0415
    from .quality import score_split  # noqa: PLC0415

    folder = RunFolder(run_dir)
    if base_model is None:
        base_model, tokenizer = load_model_and_tokenizer(job.model_name, dtype=settings.dtype)
    for target in job.targets():
        if checkpoint_digest(target.checkpoint) != target.checkpoint_digest:
            raise SftscopeError(f"{target.checkpoint} changed while the analysis ran; run it again")
    model = load_checkpoint(base_model, job.checkpoint)
    for task in quality:
        if task.split in job.quality:
            result = score_split(model, tokenizer, task.pairs, task.labels)
            for target in job.targets():
                step, ckpt = target.step, target.checkpoint_digest
                if not quality_current(folder, job.model_label, step, job.model_name, ckpt, task):
                    write_json(folder.quality_unit(job.model_label, step, task.split),
                               {"step": step, "split": task.split, "inputs": task.inputs(job.model_name, ckpt), **result})
            if on_unit:
                on_unit()
    written = 0
    for k in range(0, len(job.samples), settings.batch_samples):
        batch = job.samples[k : k + settings.batch_samples]
        wanted = {(t.step, s): expected_inputs(job.model_name, t.checkpoint_digest, probes[s], settings)
                  for t in job.targets() for s in batch}
        targets = {(step, s): folder.unit(job.model_label, step, s) for step, s in wanted}
        missing = {key for key, t in targets.items() if not t.exists() or unit_inputs(t) != wanted[key]}
        if missing:  # the whole batch is evaluated, so its values do not depend on what was done before
            requests = [
                Request(probes[s].prompt, probes[s].response, probes[s].players,
                        context=f"sample {s}, {job.model_label} step {job.step}")
                for s in batch
            ]
            results = extract_many(
                model, tokenizer, requests, baseline=settings.baseline, noise_bound=settings.noise_bound,
                tau=settings.tau, engine=settings.engine, batch_samples=settings.batch_samples,
                players_kind=settings.players, whole_prompt_masks=settings.whole_prompt_masks,
            )
            for (step, sample) in sorted(missing):
                result = results[batch.index(sample)]
                frame = result.to_dataframe().drop(columns="salient").assign(  # salience follows tau: summary only
                    sample=sample, split=probes[sample].split, step=step, model=job.model_label,
                    **result.whole.as_row(),  # coverage and whole-prompt R², one value per unit
                )
                write_unit(targets[step, sample], frame, wanted[step, sample])
                written += 1
        if on_unit:
            for _ in batch:
                on_unit()
    return written


def explain(plan: Plan, model_label: str) -> str | None:
    """One line saying which stored units are recomputed and why, if any are."""
    if not plan.stale:
        return None
    reasons = ", ".join(f"{key} ({count})" for key, count in sorted(plan.stale.items()))
    return f"{model_label}: recomputing stored results whose inputs changed: {reasons}"


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
    quality: tuple[QualityTask, ...] = (),
    progress: Callable | None = None,
    say: Callable[[str], None] | None = None,
) -> int:
    """Extract every missing unit (and score every unscored checkpoint) of one model here; returns units computed."""
    plan = plan_jobs(run_dir, model_label=model_label, model_name=model_name, checkpoints=checkpoints,
                     probes=probes, settings=settings, quality=quality)
    note = explain(plan, model_label)
    if note:
        (say or log.warning)(note)
    by_id = {p.sample: p for p in probes}
    total = sum(len(j.samples) + len(j.quality) for j in plan.jobs)
    bar = progress(total=total, desc=f"extract {model_label}") if progress and total else None
    computed = sum(
        run_job(run_dir, job, by_id, settings, base_model=base_model, tokenizer=tokenizer, quality=quality,
                on_unit=bar.update if bar else None)
        for job in plan.jobs
    )
    if bar:
        bar.close()
    return computed


def current_units(run_dir, model_label: str, checkpoints: dict[int, Path], probes: Sequence[Probe]) -> list[Path]:
    """The unit files of these checkpoints and probes (what the summary reads)."""
    folder = RunFolder(run_dir)
    return [folder.unit(model_label, step, p.sample) for step in checkpoints for p in probes]
