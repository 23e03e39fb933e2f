"""The steps of an analysis: probes, extraction and task quality at every checkpoint (resumable), the summary.

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
from .data import split_pairs
from .errors import SftscopeError
from .jobs import ModelWork, QualityTask, current_units, extract_run
from .probes import check_probe_words, choose_probes, load_probes, probe_inputs, save_probes, stored_probe_inputs
from .quality import MAX_LABELS, label_set
from .store import MARKER, JobFolder, RunFolder, changed_keys, refuse_links, remove_leftovers, run_lock
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
    train, test = split_pairs(config.data)
    check_probe_words(train, test, settings)  # before any model is loaded
    with run_lock(folder.root):
        attach_log_file(folder.log)
        # 1. a killed writer's temporary files go (we hold the lock)
        remove_leftovers(folder.analysis)

        # 2. probes: drawn once, players chosen on the model before SFT, frozen while their inputs hold
        model_name = _model_ref(config.model)
        base, tokenizer = load_model_and_tokenizer(config.model, dtype=settings.dtype)
        inputs = probe_inputs(model=model_name, train=train, test=test, count=settings.samples_per_split,
                              n_players=settings.n_players, seed=settings.seed)
        stored = stored_probe_inputs(folder.probes)
        if stored == inputs:
            probes = load_probes(folder.probes)
        else:
            if folder.probes.exists() and say:
                say(f"probes drawn again: {', '.join(changed_keys(stored, inputs))} changed")
            probes = choose_probes(base, tokenizer, train, test, count=settings.samples_per_split,
                                   n_players=settings.n_players, seed=settings.seed, allow_fewer=settings.allow_fewer)
            save_probes(folder.probes, probes, inputs)

        # 3. what to compute: every target checkpoint (interactions and task quality), the baseline's chosen one
        labels = label_set(train, test, config.data.labels)
        if labels is None and say:
            say(f"task quality: more than {MAX_LABELS} distinct responses, scored as open-ended (no accuracy); "
                "data.labels names a closed label set")
        quality = QualityTask(tuple(test), None if labels is None else tuple(labels), settings.dtype)
        work = [ModelWork("target", model_name, folder.checkpoints(), quality)]
        if baseline_run is not None:
            baseline = RunFolder(baseline_run)
            ckpts = baseline.checkpoints()
            step = max(ckpts) if settings.baseline_step is None else settings.baseline_step
            if step not in ckpts:
                raise SftscopeError(f"{baseline_run}: no checkpoint at step {step} (it has {sorted(ckpts)})")
            work.append(ModelWork("baseline", _model_ref(load_trained_config(baseline.config).model), {step: ckpts[step]}))

        # 4. the missing or stale results, here or on a Ray cluster
        if ray_address is not None:
            from .distributed import extract_with_ray  # noqa: PLC0415

            extract_with_ray(folder.root, work, probes, settings, address=ray_address, say=say,
                             samples_per_job=samples_per_job, num_gpus=num_gpus, progress=progress)
        else:
            for item in work:
                model, tok = (base, tokenizer) if item.label == "target" else load_model_and_tokenizer(item.name, dtype=settings.dtype)
                extract_run(folder.root, model_label=item.label, model_name=item.name, base_model=model,
                            tokenizer=tok, checkpoints=item.checkpoints, probes=probes, settings=settings,
                            quality=item.quality, progress=progress, say=say)

        # 5. dynamics, boundary, findings, quality and stopping rules, written next to the effects
        units = [u for item in work for u in current_units(folder.root, item.label, item.checkpoints, probes)]
        fewer = {p.sample: len(p.players) for p in probes if len(p.players) < settings.n_players}
        return summarize_run(folder.root, settings, units=units, steps=list(work[0].checkpoints), labels=labels,
                             extra={"probes_with_fewer_players": fewer})


def _model_ref(name: str) -> str:
    """Absolute path for local model folders (workers may run elsewhere), names unchanged."""
    path = Path(name)
    return str(path.resolve()) if path.exists() else name
