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

import copy
import dataclasses
import json
import logging
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from .analyze import AnalysisSettings, analyze
from .errors import SftscopeError
from .interactions import atomic_write
from .lock import run_lock
from .train import TrainConfig, _build, read_yaml, train

log = logging.getLogger(__name__)


@dataclass
class RunConfig:
    """``train`` configures the target run; ``baseline`` overrides it for the baseline model (None: no baseline)."""

    output_dir: str = "sftscope-out"
    train: TrainConfig = field(default_factory=TrainConfig)
    baseline: dict[str, Any] | None = field(default_factory=lambda: {"model": "gemma3-270m"})
    analysis: AnalysisSettings = field(default_factory=AnalysisSettings)


def run_config_from_dict(raw: dict[str, Any], where: str = "config") -> RunConfig:
    raw = dict(raw or {})
    if not isinstance(raw, dict):
        raise SftscopeError(f"{where}: expected a mapping")
    known = {f.name for f in dataclasses.fields(RunConfig)}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise SftscopeError(f"{where}: unknown key {unknown[0]!r} (known: {', '.join(sorted(known))})")
    config = RunConfig()
    if "output_dir" in raw:
        if not isinstance(raw["output_dir"], str):
            raise SftscopeError(f"{where}.output_dir: expected str")
        config.output_dir = raw["output_dir"]
    if "train" in raw:
        config.train = _build(TrainConfig, raw["train"], f"{where}.train")
    if "baseline" in raw:
        config.baseline = raw["baseline"]
        if config.baseline is not None:
            baseline_config(config)  # validate now, not after an hour of training
    if "analysis" in raw:
        config.analysis = _build(AnalysisSettings, raw["analysis"], f"{where}.analysis")
    return config


def load_run_config(path: str | os.PathLike) -> RunConfig:
    return run_config_from_dict(read_yaml(path), str(path))


def baseline_config(config: RunConfig) -> TrainConfig:
    merged = dataclasses.asdict(config.train)
    for key, value in (config.baseline or {}).items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = {**merged[key], **value}
        else:
            merged[key] = value
    return _build(TrainConfig, merged, "config.baseline")


def _train_stage(config: TrainConfig, run_dir: Path, name: str, say: Callable[[str], None]) -> None:
    if (run_dir / "DONE").exists():
        say(f"{name}: training already done, skipped")
        return
    if run_dir.exists():
        say(f"{name}: unfinished training found, restarting it from step 0")
        for child in run_dir.iterdir():  # keep the folder (and any lock in it), drop partial results
            if child.name != ".sftscope.lock":
                shutil.rmtree(child) if child.is_dir() else child.unlink()
    config = copy.deepcopy(config)
    config.output_dir = str(run_dir)
    say(f"{name}: training {config.model}")
    train(config)
    atomic_write(run_dir / "DONE", lambda tmp: Path(tmp).write_text("done\n", encoding="utf-8"))


def run(
    config: RunConfig, *, progress: Callable | None = None, say: Callable[[str], None] = print, **ray_options
) -> dict:
    """Train target (and baseline), analyse, report. Returns the summary.

    ``ray_options`` (``ray_address``, ``samples_per_job``, ``num_gpus``) go to ``analyze``.
    """
    out = Path(config.output_dir)
    with run_lock(out):
        return _run_locked(config, out, progress, say, ray_options)


def _run_locked(config: RunConfig, out: Path, progress, say, ray_options) -> dict:
    from .report import build_report  # noqa: PLC0415

    target_dir, baseline_dir = out / "target", out / "baseline"
    _train_stage(config.train, target_dir, "target", say)
    if config.baseline is not None:
        _train_stage(baseline_config(config), baseline_dir, "baseline", say)
    say("analysis: extracting interactions at every checkpoint")
    summary = analyze(
        target_dir, config.analysis, baseline_run=baseline_dir if config.baseline is not None else None,
        progress=progress, **ray_options,
    )
    page = build_report(target_dir)
    shutil.copyfile(page, out / "report.html")
    summary = {**summary, "report": str(out / "report.html"), "run_config": dataclasses.asdict(config)}
    atomic_write(out / "summary.json", lambda tmp: Path(tmp).write_text(json.dumps(summary, indent=1), encoding="utf-8"))
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
