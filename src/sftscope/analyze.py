"""The steps of an analysis: probes, extraction, task quality and drift at every checkpoint (resumable), the summary.

The run folder's layout is in ``store.py``. A result is reused only when it
was computed from today's inputs (``jobs.py``), so an interrupted analysis
resumes without recomputing anything and a changed setting recomputes exactly
what it changes.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

from .config import AnalysisSettings, load_trained_config
from .console import attach_log_file
from .data import split_notes, split_pairs
from .drift import load_general_set
from .drift_jobs import DriftTask, base_answers, drift_model, drift_run, resolve_dtype
from .errors import SftscopeError
from .jobs import ModelWork, QualityTask, current_units, extract_run, pinned_threads
from .probes import (
    TASK_SPLITS, check_probe_words, choose_probes, draw_general, load_probes, probe_inputs, save_probes,
    stored_probe_inputs,
)
from .quality import MAX_LABELS, label_set
from .stopping import labels_needed
from .store import MARKER, JobFolder, RunFolder, changed_keys, read_losses, refuse_links, remove_leftovers, run_lock
from .summary import summarize_run


def analyze(
    run_dir: str | os.PathLike,
    settings: AnalysisSettings | None = None,
    *,
    baseline_run: str | os.PathLike | None = None,
    progress: Callable | None = None,
    say: Callable[[str], None] | None = None,
    ray_address: str | None = None,
    samples_per_job: int | None = None,
    num_gpus: float = 0,
) -> dict:
    """Probe samples, frozen players, extraction and quality at every checkpoint (resumable), then the summary.

    ``ray_address`` fans the extraction jobs out over a Ray cluster (``"local"``
    starts one on this machine; ``"auto"`` joins a running one); each job is one
    checkpoint and up to ``samples_per_job`` samples, with ``num_gpus`` each.
    ``say`` receives the tool's own lines (what is recomputed and why).
    """
    from .models import load_model_and_tokenizer  # noqa: PLC0415 - torch only when working

    settings = settings or AnalysisSettings()
    folder = RunFolder(Path(run_dir).expanduser().resolve())
    if not folder.is_run():
        if JobFolder(folder.root).target.is_run():
            raise SftscopeError(f"{run_dir} is the folder of a whole job (sftscope run): analyze its run folder "
                                f"{Path(run_dir) / 'target'} (with --baseline-run {Path(run_dir) / 'baseline'}), or "
                                "run the job again")
        raise SftscopeError(f"{run_dir} is not an sftscope run folder (no {MARKER}): train into it first")
    refuse_links(folder.root)
    config = load_trained_config(folder.config)
    check_validation_losses(folder)
    splits = split_pairs(config.data)
    train, validation, test = splits
    check_probe_words(train, validation, settings)  # before any model is loaded
    labels = label_set(splits, config.data.labels)
    if labels is None and labels_needed(settings.stop_rule):
        raise SftscopeError(f"analysis.stop_rule {settings.stop_rule} decides on validation accuracy, but this run's "
                            f"responses are open-ended (more than {MAX_LABELS} distinct): choose a rule on the loss, "
                            "e.g. best_eval_loss, or name the label set in data.labels")
    general = load_general_set(settings.general_prompts, settings.drift_limit) if settings.drift else None
    # every forward pass on one thread count, whatever this process started with (see pinned_threads)
    with run_lock(folder.root), pinned_threads(settings.threads):
        attach_log_file(folder.log)
        # 1. a killed writer's temporary files go (we hold the lock)
        remove_leftovers(folder.analysis)
        if say:
            for note in split_notes(splits):
                say(note)
            if labels is None:
                say(f"task quality: more than {MAX_LABELS} distinct responses, scored as open-ended (no accuracy); "
                    "data.labels names a closed label set")
            if not settings.drift:
                say("drift: off (analysis.drift: false)")

        # 2. the base model, and its answers to the general prompts (drift's reference; the general probes' targets)
        model_name = _model_ref(config.model)
        base, tokenizer = load_model_and_tokenizer(config.model, dtype=settings.dtype)
        drift_task = reference = drifting = None
        if general is not None:
            drift_task = DriftTask(general, None if labels is None else tuple(labels),
                                   resolve_dtype(settings.drift_dtype, base))
            drifting = drift_model(base, drift_task.dtype)
            reference = base_answers(folder, drifting, tokenizer, drift_task, model_name, progress=progress, say=say)
        general_draw = [] if reference is None or not settings.general_samples else draw_general(
            list(general.prompts), reference["texts"], settings.general_samples, settings.n_players, settings.seed,
            settings.players)

        # 3. probes: drawn once, players chosen on the model before SFT, frozen while their inputs hold
        inputs = probe_inputs(model=model_name, train=train, validation=validation, count=settings.samples_per_split,
                              n_players=settings.n_players, seed=settings.seed, general=general_draw,
                              kind=settings.players)
        stored = stored_probe_inputs(folder.probes)
        if stored == inputs:
            probes = load_probes(folder.probes)
        else:
            if folder.probes.exists() and say:
                say(f"probes drawn again: {', '.join(changed_keys(stored, inputs))} changed")
            probes = choose_probes(base, tokenizer, train, validation, count=settings.samples_per_split,
                                   n_players=settings.n_players, seed=settings.seed, allow_fewer=settings.allow_fewer,
                                   general=general_draw, kind=settings.players)
            save_probes(folder.probes, probes, inputs)

        # 4. what to compute: every target checkpoint (interactions, quality on validation and test), the baseline's
        closed = None if labels is None else tuple(labels)
        quality = tuple(QualityTask(tuple(pairs), closed, settings.dtype, split)
                        for split, pairs in (("validation", validation), ("test", test)))
        work = [ModelWork("target", model_name, folder.checkpoints(), quality)]
        if baseline_run is not None:
            baseline = RunFolder(Path(baseline_run).expanduser())
            ckpts = baseline.checkpoints()
            step = max(ckpts) if settings.baseline_step is None else settings.baseline_step
            if step not in ckpts:
                raise SftscopeError(f"{baseline_run}: no checkpoint at step {step} (it has {sorted(ckpts)})")
            # the baseline stands for generalizability of the task's interactions: task probes only
            work.append(ModelWork("baseline", _model_ref(load_trained_config(baseline.config).model), {step: ckpts[step]},
                                  splits=TASK_SPLITS))

        # 5. the missing or stale results, here or on a Ray cluster
        if ray_address is not None:
            from .distributed import extract_with_ray  # noqa: PLC0415

            extract_with_ray(folder.root, work, probes, settings, address=ray_address, say=say,
                             samples_per_job=samples_per_job, num_gpus=num_gpus, progress=progress)
        else:
            for item in work:
                model, tok = (base, tokenizer) if item.label == "target" else load_model_and_tokenizer(item.name, dtype=settings.dtype)
                extract_run(folder.root, model_label=item.label, model_name=item.name, base_model=model,
                            tokenizer=tok, checkpoints=item.checkpoints, probes=item.own(probes), settings=settings,
                            quality=item.quality, progress=progress, say=say)

        # 6. drift at every target checkpoint, in one pass (here: it holds every checkpoint's adapter at once)
        if drift_task is not None:
            drift_run(folder, drifting, tokenizer, model_name, work[0].checkpoints, drift_task, reference,
                      progress=progress, say=say)

        # 7. dynamics, boundary, findings, quality, drift and stopping rules, written next to the effects
        units = [u for item in work for u in current_units(folder.root, item.label, item.checkpoints, item.own(probes))]
        fewer = {p.sample: len(p.players) for p in probes if len(p.players) < settings.n_players}
        return summarize_run(folder.root, settings, units=units, steps=list(work[0].checkpoints), labels=labels,
                             extra={"probes_with_fewer_players": fewer, "splits": {k: len(v) for k, v in splits._asdict().items()},
                                    "data_notes": split_notes(splits)[1:], "drift_dtype": drift_task and drift_task.dtype})


def check_validation_losses(folder: RunFolder) -> None:
    """A run trained before sftscope kept a validation split has no validation loss: its rules would see the test split."""
    rows = read_losses(folder.root)
    if rows and "validation_loss" not in rows[0] and "test_loss" in rows[0]:
        raise SftscopeError(f"{folder.root} was trained by sftscope 0.2, which had no validation split (its rules saw "
                            "the test loss): train it again into a new folder to analyse it")


def _model_ref(name: str) -> str:
    """Absolute path for local model folders (workers may run elsewhere), names unchanged."""
    path = Path(name)
    return str(path.resolve()) if path.exists() else name
