"""Every setting of a run in one place: dataclasses with documented defaults, built from YAML with checks.

``TrainConfig`` configures one SFT run (``sftscope train``), ``AnalysisSettings``
the extraction and dynamics (``sftscope analyze``), ``RunConfig`` the whole job
(``sftscope run``: a target run, an optional baseline run of another
architecture, the analysis). Unknown keys and wrongly typed values are refused
with their key path, when the file is read.
"""

from __future__ import annotations

import copy
import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .errors import SftscopeError


@dataclass
class LoraSettings:
    """LoRA adapter shape; ``target_modules='all-linear'`` adapts every linear layer (the paper's choice)."""

    r: int = 16
    alpha: int = 32
    dropout: float = 0.0
    target_modules: str | list[str] = "all-linear"


@dataclass
class DataSettings:
    """Where the pairs come from. ``train='emotions'`` is the shipped data set."""

    train: str = "emotions"
    test: str | None = None
    test_ratio: float = 0.2
    seed: int = 0
    max_train_examples: int | None = 64
    max_test_examples: int | None = None
    prompt_column: str = "text"
    response_column: str = "label"
    template: str = "{text}"
    label_names: str | list[str] | None = None


@dataclass
class TrainConfig:
    """Everything an SFT run needs; defaults overfit the embedded model on 2 CPU cores in minutes."""

    output_dir: str = "sftscope-run"
    model: str = "smollm2-135m-instruct"
    data: DataSettings = field(default_factory=DataSettings)
    lora: LoraSettings = field(default_factory=LoraSettings)
    learning_rate: float = 1e-3
    warmup_ratio: float = 0.1
    lr_scheduler: str = "cosine"
    batch_size: int = 8
    gradient_accumulation_steps: int = 1
    epochs: float = 10.0
    max_steps: int = -1
    seed: int = 0
    dtype: str = "float32"
    report_to: list[str] = field(default_factory=list)
    checkpoint_every: int = 16
    eval_train_examples: int = 64
    max_length: int = 256
    trust_remote_code: bool = False


@dataclass
class AnalysisSettings:
    """Extraction and dynamics settings (METHOD: players, salience, stage boundary)."""

    samples_per_split: int = 6
    n_players: int = 8
    seed: int = 0
    tau: float = 0.05
    salience: str = "relative"
    noise_bound: float = 0.02
    baseline: str = "mean"
    engine: str = "auto"
    stage_rule: str = "cumulative"
    stage_fraction: float = 0.9
    baseline_step: int | None = None
    batch_samples: int = 1  # samples sharing each forward pass of the prefix engine: 4-8 on a GPU, 1 on CPU


@dataclass
class RunConfig:
    """``train`` configures the target run; ``baseline`` overrides it for the baseline model (None: no baseline)."""

    output_dir: str = "sftscope-out"
    train: TrainConfig = field(default_factory=TrainConfig)
    baseline: dict[str, Any] | None = field(default_factory=lambda: {"model": "gemma3-270m"})
    analysis: AnalysisSettings = field(default_factory=AnalysisSettings)


# --------------------------------------------------------------------------- building from mappings


def build(cls, raw: dict[str, Any], where: str):
    """An instance of the dataclass ``cls`` from a mapping, naming any unknown key or wrongly typed value."""
    if not isinstance(raw, dict):
        raise SftscopeError(f"{where}: expected a mapping, got {type(raw).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        raise SftscopeError(f"{where}: unknown key {unknown[0]!r} (known: {', '.join(fields)})")
    values = {}
    for name, value in raw.items():
        default = getattr(cls(), name)
        key = f"{where}.{name}"
        if dataclasses.is_dataclass(default):
            values[name] = build(type(default), value, key)
        else:
            values[name] = _check_type(value, default, key)
    return cls(**values)


def _check_type(value, default, key: str):
    if value is None or default is None:
        return value
    if isinstance(default, bool):
        ok = isinstance(value, bool)
    elif isinstance(default, float):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif isinstance(default, int):
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif isinstance(default, str):
        ok = isinstance(value, (str, list)) if key.endswith(("target_modules", "label_names")) else isinstance(value, str)
    elif isinstance(default, list):
        ok = isinstance(value, list)
    else:
        ok = True
    if not ok:
        raise SftscopeError(f"{key}: expected {type(default).__name__}, got {type(value).__name__} ({value!r})")
    return value


def config_from_dict(raw: dict[str, Any], where: str = "config") -> TrainConfig:
    """A training config, naming any unknown key or wrongly typed value."""
    return build(TrainConfig, raw or {}, where)


def run_config_from_dict(raw: dict[str, Any], where: str = "config") -> RunConfig:
    """A whole-job config: ``output_dir``, ``train``, ``baseline`` (overrides of ``train``, or null), ``analysis``."""
    raw = dict(raw or {})
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
        config.train = build(TrainConfig, raw["train"], f"{where}.train")
    if "baseline" in raw:
        config.baseline = raw["baseline"]
        if config.baseline is not None:
            baseline_config(config)  # validate now, not after an hour of training
    if "analysis" in raw:
        config.analysis = build(AnalysisSettings, raw["analysis"], f"{where}.analysis")
    return config


def baseline_config(config: RunConfig) -> TrainConfig:
    """The baseline run's config: the target's, with ``config.baseline``'s keys overriding (nested ones merged)."""
    merged = dataclasses.asdict(config.train)
    for key, value in (config.baseline or {}).items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = {**merged[key], **value}
        else:
            merged[key] = value
    return build(TrainConfig, merged, "config.baseline")


# --------------------------------------------------------------------------- files


def read_yaml(path: str | os.PathLike) -> dict[str, Any]:
    """A YAML mapping from a file, with one-line errors for a missing or malformed file."""
    path = Path(path)
    if not path.exists():
        raise SftscopeError(f"config file not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise SftscopeError(f"{path}: malformed YAML ({str(exc).splitlines()[0]})") from None
    return raw or {}


def load_config(path: str | os.PathLike) -> TrainConfig:
    return config_from_dict(read_yaml(path), str(path))


def load_run_config(path: str | os.PathLike) -> RunConfig:
    return run_config_from_dict(read_yaml(path), str(path))


def config_yaml(config) -> str:
    """The full settings of a config dataclass as YAML text."""
    return yaml.safe_dump(dataclasses.asdict(config), sort_keys=False)


def with_output_dir(config: TrainConfig, output_dir: str | os.PathLike) -> TrainConfig:
    """A copy of ``config`` writing into ``output_dir``."""
    config = copy.deepcopy(config)
    config.output_dir = str(output_dir)
    return config
