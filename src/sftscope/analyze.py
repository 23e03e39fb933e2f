"""The steps of an analysis: probes, extraction at every checkpoint (resumable, serial or on Ray), the summary.

The run folder's layout is in ``store.py``; a unit (model, checkpoint, sample)
is done when its Parquet file exists, so an interrupted analysis resumes
without recomputing or duplicating anything.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

from .config import AnalysisSettings, load_config
from .console import attach_log_file
from .data import split_pairs
from .errors import SftscopeError
from .jobs import extract_run
from .probes import choose_probes, load_probes, save_probes
from .store import RunFolder, remove_leftovers, run_lock
from .summary import summarize_run


def analyze(
    run_dir: str | os.PathLike,
    settings: AnalysisSettings | None = None,
    *,
    baseline_run: str | os.PathLike | None = None,
    progress: Callable | None = None,
    ray_address: str | None = None,
    samples_per_job: int | None = None,
    num_gpus: float = 0,
) -> dict:
    """Probe samples, frozen players, extraction at every checkpoint (resumable), then the summary.

    ``ray_address`` fans the extraction jobs out over a Ray cluster (``"local"``
    starts one on this machine; ``"auto"`` joins a running one); each job is one
    checkpoint and up to ``samples_per_job`` samples, with ``num_gpus`` each.
    """
    from .models import load_model_and_tokenizer  # noqa: PLC0415 - torch only when working

    settings = settings or AnalysisSettings()
    folder = RunFolder(Path(run_dir).resolve())
    config = load_config(folder.config)
    with run_lock(folder.root):
        attach_log_file(folder.log)
        # 1. a killed writer's temporary files go (we hold the lock)
        remove_leftovers(folder.analysis)

        # 2. probes: drawn once, players chosen on the model before SFT, then frozen
        base, tokenizer = load_model_and_tokenizer(config.model, dtype="float32")
        if folder.probes.exists():
            probes = load_probes(folder.probes)
        else:
            train, test = split_pairs(config.data)
            probes = choose_probes(base, tokenizer, train, test, count=settings.samples_per_split,
                                   n_players=settings.n_players, seed=settings.seed)
            save_probes(folder.probes, probes)

        # 3. what to extract: every target checkpoint, and the baseline run's chosen one
        units = [("target", _model_ref(config.model), folder.checkpoints())]
        if baseline_run is not None:
            baseline = RunFolder(baseline_run)
            ckpts = baseline.checkpoints()
            step = max(ckpts) if settings.baseline_step is None else settings.baseline_step
            if step not in ckpts:
                raise SftscopeError(f"{baseline_run}: no checkpoint at step {step}")
            units.append(("baseline", _model_ref(load_config(baseline.config).model), {step: ckpts[step]}))

        # 4. extraction of the missing units, here or on a Ray cluster
        if ray_address is not None:
            from .distributed import extract_with_ray  # noqa: PLC0415

            extract_with_ray(folder.root, units, probes, settings, address=ray_address,
                             samples_per_job=samples_per_job, num_gpus=num_gpus, progress=progress)
        else:
            for label, name, checkpoints in units:
                model, tok = (base, tokenizer) if label == "target" else load_model_and_tokenizer(name, dtype="float32")
                extract_run(folder.root, model_label=label, model_name=name, base_model=model, tokenizer=tok,
                            checkpoints=checkpoints, probes=probes, settings=settings, progress=progress)

        # 5. dynamics, boundary, findings, written next to the effects
        return summarize_run(folder.root, settings)


def _model_ref(name: str) -> str:
    """Absolute path for local model folders (workers may run elsewhere), names unchanged."""
    path = Path(name)
    return str(path.resolve()) if path.exists() else name
