"""The main job: train the target and the baseline, analyse, report; each stage skips finished work.

Run folder::

    <output_dir>/target/     SFT run of the model under study (checkpoints, losses.csv, analysis/, report/)
    <output_dir>/baseline/   SFT run of a model of another architecture on the same data
    <output_dir>/summary.json, <output_dir>/report.html   copies of the answer

A training stage is done when it wrote its ``DONE`` marker (after the last
checkpoint); an interrupted training stage restarts from step 0 (adapters are saved without
optimizer state; with the same seed the run is the same). Extraction resumes
unit by unit (see ``analyze``).
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
from pathlib import Path
from typing import Callable

from .analyze import analyze
from .config import AnalysisSettings, RunConfig, TrainConfig, baseline_config, with_output_dir
from .console import attach_log_file
from .store import LOCK_NAME, JobFolder, RunFolder, run_lock, write_json, write_text
from .train import train

log = logging.getLogger(__name__)


def _train_stage(config: TrainConfig, folder: RunFolder, name: str, say: Callable[[str], None], progress) -> None:
    if folder.done.exists():
        say(f"{name}: training already done, skipped")
        return
    if folder.root.exists():
        say(f"{name}: unfinished training found, restarting it from step 0")
        for child in folder.root.iterdir():  # keep the folder (and any lock in it), drop partial results
            if child.name != LOCK_NAME:
                shutil.rmtree(child) if child.is_dir() else child.unlink()
    config = with_output_dir(config, folder.root)
    say(f"{name}: training {config.model}")
    train(config, progress=progress)
    write_text(folder.done, "done\n")


def run(
    config: RunConfig, *, progress: Callable | None = None, say: Callable[[str], None] = print, **ray_options
) -> dict:
    """Train target (and baseline), analyse, report. Returns the summary.

    ``ray_options`` (``ray_address``, ``samples_per_job``, ``num_gpus``) go to ``analyze``.
    """
    folder = JobFolder(config.output_dir)
    with run_lock(folder.root):
        attach_log_file(folder.log)
        return _run_locked(config, folder, progress, say, ray_options)


def _run_locked(config: RunConfig, folder: JobFolder, progress, say, ray_options) -> dict:
    from .report import build_report  # noqa: PLC0415

    _train_stage(config.train, folder.target, "target", say, progress)
    if config.baseline is not None:
        _train_stage(baseline_config(config), folder.baseline, "baseline", say, progress)
    say("analysis: extracting interactions at every checkpoint")
    summary = analyze(
        folder.target.root, config.analysis, baseline_run=folder.baseline.root if config.baseline is not None else None,
        progress=progress, **ray_options,
    )
    page = build_report(folder.target.root)
    shutil.copyfile(page, folder.report)
    summary = {**summary, "report": str(folder.report), "run_config": dataclasses.asdict(config)}
    write_json(folder.summary, summary)
    return summary


def demo_config(out: str, quick: bool) -> RunConfig:
    """The embedded default: SmolLM2-135M tuned, Gemma-3-270M baseline, the shipped emotions data."""
    config = RunConfig(output_dir=out)
    if quick:
        config.train.data.max_train_examples = 16
        config.train.data.max_test_examples = 16
        config.train.max_steps = 8
        config.train.checkpoint_every = 4
        config.train.eval_train_examples = 16
        config.baseline = {"model": "gemma3-270m", "max_steps": 4}
        config.analysis = AnalysisSettings(samples_per_split=1, n_players=5)
    else:
        # The baseline only needs its final checkpoint: a shorter run with light evaluation.
        config.baseline = {"model": "gemma3-270m", "max_steps": 32, "checkpoint_every": 32,
                           "eval_train_examples": 16, "data": {"max_test_examples": 16}}
        config.analysis = AnalysisSettings(samples_per_split=4, n_players=7)
    return config
