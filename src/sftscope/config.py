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
import math
import os
import re
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
    """Where the pairs come from and how a record becomes one (``docs/data.md``).

    ``train='emotions'`` is the shipped data set (its own train, validation and
    test splits); ``emotions:validation`` one of its splits. Otherwise the test
    and validation splits come from ``test`` and ``validation`` sources, or are
    drawn (seeded) from ``train``.
    Without a column mapping the format is recognised (alpaca, Dolly, messages,
    prompt-completion; CSV/TSV need ``text`` and ``label`` columns). A mapping
    (``prompt_column`` or ``template``, ``response_column``, ``system_column``)
    works for JSONL, CSV/TSV, Parquet and hub data sets alike; an integer column
    is a 0-based position and means the table has no header row.
    """

    train: str = "emotions"
    test: str | None = None
    validation: str | None = None  # the split the stopping rules decide on; default: drawn from train
    test_ratio: float = 0.2
    validation_ratio: float = 0.2  # of the train source, when data.validation is not given (sizes equal to test's)
    seed: int = 0
    max_train_examples: int | None = 64
    max_test_examples: int | None = None
    prompt_column: str | int | None = None
    response_column: str | int | None = None
    system_column: str | int | None = None
    template: str | None = None  # the prompt from the record's fields, e.g. "Classify: {text}" ({0} for column 0)
    label_names: str | list[str] | None = None  # a file with one name per line, or a list: maps integer labels
    multi_label: str = "skip"  # label ids joined by commas ("3,7"): skip the row, keep the first, or join the names
    labels: list[str] | None = None  # the closed label set for task quality; default: the distinct responses


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
    dense_checkpoints: bool = True  # also steps 1, 2, 4, ... below checkpoint_every (where SFT moves fastest)
    eval_train_examples: int = 32  # train-loss subset at each checkpoint (as in benchmarks/stopping.py)
    max_length: int = 256
    trust_remote_code: bool = False
    # recompute activations in the backward pass (TRL's default): null = on with a GPU, off on the CPU, where it
    # makes a step about 1.3 times as long and memory is rarely short (BENCHMARKS.md); changes no weights
    gradient_checkpointing: bool | None = None


@dataclass
class AnalysisSettings:
    """Extraction and dynamics settings (METHOD: players, salience, stage boundary)."""

    samples_per_split: int = 6
    n_players: int = 8
    players: str = "words"  # words: the n most salient words (the rest is background); phrases: n spans covering all words
    allow_fewer: bool = False  # a probe prompt with fewer usable words uses all of them (reported), else an error
    seed: int = 0
    tau: float = 0.05
    salience: str = "relative"
    noise_bound: float = 0.02
    baseline: str = "mean"
    engine: str = "auto"
    stage_rule: str = "cumulative"
    stage_fraction: float = 0.9
    short_stage: float = 0.25  # finding 3: the denoising stage is "short" when it is at most this share of training
    baseline_step: int | None = None
    batch_samples: int = 1  # samples sharing each forward pass of the prefix engine: 4-8 on a GPU, 1 on CPU
    stop_rule: str = "last"  # the recommended checkpoint's rule (stopping.DEFAULT_RULE: the benchmark's winner)
    dtype: str = "float32"  # of the model during extraction and scoring; bfloat16 halves memory on a GPU
    threads: int = 2  # CPU threads of every extraction and scoring job, serial or on Ray (one count: identical rows)
    drift: bool = True  # general-capability drift at every checkpoint (KL, general text, knowledge, format)
    general_prompts: str | None = None  # your own general prompts (JSONL, {"prompt": ...} per line); default: shipped
    whole_prompt_masks: int = 256  # random masks over all content words per result for whole-prompt R² (0: skip; free for phrases)
    general_samples: int = 4  # general prompts analysed for interactions at every checkpoint (the "general" split)
    drift_dtype: str = "auto"  # bfloat16 where native (3x faster on such CPUs), else float32; or name one
    drift_limit: int | None = None  # N prompts, passages and items, evenly spread over the general set (cheaper, noisier)
    max_knowledge_drop: float = 0.05  # best_within_drift: the knowledge accuracy a checkpoint may lose (points / 100)
    max_format_drift: float = 0.10  # best_within_drift: how much more of the general prompts than the base model it may answer with a task label


@dataclass
class RunConfig:
    """``train`` configures the target run; ``baseline`` overrides it for the baseline model (None: no baseline)."""

    output_dir: str = "sftscope-out"
    train: TrainConfig = field(default_factory=TrainConfig)
    baseline: dict[str, Any] | None = field(default_factory=lambda: {"model": "gemma3-270m"})
    analysis: AnalysisSettings = field(default_factory=AnalysisSettings)


# --------------------------------------------------------------------------- building from mappings


def build(cls, raw: dict[str, Any], where: str):
    """An instance of the dataclass ``cls`` from a mapping: unknown keys, wrong types and bad values are named."""
    if not isinstance(raw, dict):
        raise SftscopeError(f"{where}: expected a mapping of settings, got {type(raw).__name__} ({_short(raw)})")
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
            values[name] = _check_type(value, fields[name].type, key)
            if name in PATH_KEYS:
                values[name] = expand_user(values[name])
    instance = cls(**values)
    check(instance, where)
    return instance


_TYPES = {"int": (int,), "float": (int, float), "str": (str,), "bool": (bool,), "None": (type(None),),
          "list[str]": (list,), "dict[str, Any]": (dict,)}


def _check_type(value, annotation: str, key: str):
    """``value`` if it matches the field's annotation (e.g. ``str | list[str] | None``), else a one-line error."""
    options = [part.strip() for part in str(annotation).split("|")]
    for option in options:
        types = _TYPES[option]
        if isinstance(value, bool) and bool not in types:
            continue  # YAML's yes/true is not a number
        if isinstance(value, types):
            if option == "list[str]" and not all(isinstance(v, str) for v in value):
                continue
            if option in ("float", "int") and not math.isfinite(value):
                raise SftscopeError(f"{key}: must be a finite number, got {value!r}")
            return float(value) if option == "float" else value
    expected = " or ".join("null" if o == "None" else "a list of strings" if o == "list[str]" else o for o in options)
    if value is None and key.rsplit(".", 1)[-1] in PATH_KEYS:
        raise SftscopeError(f"{key}: expected {expected}, got null (in YAML a bare ~ means null: quote it, "
                            "'~/runs/x', to mean your home folder)")
    raise SftscopeError(f"{key}: expected {expected}, got {type(value).__name__} ({_short(value)})")


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


PATH_KEYS = ("output_dir", "train", "test", "validation", "label_names", "model", "general_prompts")


def expand_user(value):
    """``~`` and ``~user`` at the start of a path, as a shell (and transformers) would expand them."""
    if isinstance(value, str) and value.startswith("~"):
        return os.path.expanduser(value)
    return value


# --------------------------------------------------------------------------- values


MAX_EXACT_PLAYERS = 14  # 16,384 masked prompts and an LP with 2 * 3^14 (9.6 M) non-zeros per sample
SCHEDULERS = ("linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup",
              "inverse_sqrt", "cosine_with_min_lr", "cosine_warmup_with_min_lr", "warmup_stable_decay")
DTYPES = ("float32", "bfloat16", "float16")
STOP_RULES = ("cumulative", "crossover", "cumulative_live", "emergence_rho", "probe_utility_patience",
              "boundary_then_eval_loss", "eval_loss_patience_1", "eval_loss_patience_2", "eval_accuracy_patience_2",
              "best_eval_loss", "best_eval_accuracy", "best_within_drift",
              "last")  # stopping.standard_rules (a test keeps the two lists equal)


# transformers' report_to integrations and the package each needs (tests keep the names equal to transformers')
REPORT_TO = {"azure_ml": ("azureml",), "comet_ml": ("comet_ml",), "mlflow": ("mlflow",), "neptune": ("neptune",),
             "tensorboard": ("tensorboard", "tensorboardX"), "trackio": ("trackio",), "wandb": ("wandb",),
             "codecarbon": ("codecarbon",), "clearml": ("clearml",), "dagshub": ("dagshub",), "flyte": ("flytekit",),
             "dvclive": ("dvclive",), "swanlab": ("swanlab",), "kubeflow": ("kubeflow",)}


def check_report_to(names: list[str], key: str, *, installed: bool = False) -> None:
    """Every tracker is one transformers knows (when the file is read) and, with ``installed``, whose package is
    installed here (before a training starts; a config can be checked or dry-run on a machine without it)."""
    import importlib.util  # noqa: PLC0415

    for name in names:
        if name in ("none", "all"):
            continue
        if name not in REPORT_TO:
            raise SftscopeError(f"{key}: unknown tracker {_short(name)} (transformers knows: "
                                f"{', '.join(REPORT_TO)}, none, all)")
        if installed and not any(importlib.util.find_spec(module) for module in REPORT_TO[name]):
            raise SftscopeError(f"{key}: {name} is not installed (pip install {REPORT_TO[name][0]}), "
                                "or remove it from report_to")


def players_cost(n: int) -> str:
    """What exact extraction with ``n`` players costs, in words."""
    lp_bytes = 2 * 3**n * 12  # non-zeros of the LP's constraint matrix, value and index
    return f"{2**n:,} masked prompts per sample and checkpoint and an LP of about {_bytes(lp_bytes)}"


def _bytes(count: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB", "PB"):
        if count < 1024:
            return f"{count:.0f} {unit}"
        count /= 1024
    return f"{count:.0f} EB"


def check_players(n: int, key: str = "n_players") -> None:
    if not 1 <= n <= MAX_EXACT_PLAYERS:
        if n < 1:
            raise SftscopeError(f"{key}: must be at least 1, got {n}")
        raise SftscopeError(f"{key}: {n} players means {players_cost(n)}; exact extraction stops at "
                            f"{MAX_EXACT_PLAYERS} ({players_cost(MAX_EXACT_PLAYERS)})")


def check(settings, where: str) -> None:
    """Values a run cannot start with, named with their key, before any model is loaded."""
    def need(ok: bool, key: str, what: str) -> None:
        if not ok:
            raise SftscopeError(f"{where}.{key}: {what}, got {getattr(settings, key)!r}")

    if isinstance(settings, LoraSettings):
        need(settings.r >= 1, "r", "the LoRA rank must be at least 1")
        need(settings.alpha > 0, "alpha", "must be positive")
        need(0 <= settings.dropout < 1, "dropout", "must be in [0, 1)")
    elif isinstance(settings, DataSettings):
        need(0 < settings.test_ratio < 1, "test_ratio", "must be in (0, 1)")
        need(0 < settings.validation_ratio < 1, "validation_ratio", "must be in (0, 1)")
        need(settings.seed >= 0, "seed", "must be 0 or more")
        need(settings.labels is None or len(settings.labels) > 0, "labels", "must list the labels (or be null: the "
             "distinct responses)")
        need(settings.labels is None or all(label.strip() for label in settings.labels), "labels",
             "must not hold an empty label")
        for key in ("max_train_examples", "max_test_examples"):
            need(getattr(settings, key) is None or getattr(settings, key) >= 1, key, "must be at least 1 (or null: all)")
        need(settings.template is None or bool(settings.template.strip()), "template", "must not be empty")
        need(settings.multi_label in ("skip", "first", "join"), "multi_label", "must be skip, first or join")
        for key in ("prompt_column", "response_column", "system_column"):
            value = getattr(settings, key)
            need(not isinstance(value, int) or value >= 0, key, "a column position must be 0 or more")
    elif isinstance(settings, TrainConfig):
        need(settings.learning_rate > 0, "learning_rate", "must be positive")
        need(0 <= settings.seed < 2**32, "seed", "must be in 0 .. 2^32 - 1 (what torch and numpy accept)")
        need(0 <= settings.warmup_ratio < 1, "warmup_ratio", "must be in [0, 1)")
        need(settings.lr_scheduler in SCHEDULERS, "lr_scheduler", f"must be one of {', '.join(SCHEDULERS)}")
        need(settings.batch_size >= 1, "batch_size", "must be at least 1")
        need(settings.gradient_accumulation_steps >= 1, "gradient_accumulation_steps", "must be at least 1")
        need(settings.epochs > 0, "epochs", "must be positive")
        need(settings.max_steps == -1 or settings.max_steps >= 1, "max_steps",
             "must be a positive number of steps (or -1: train by epochs)")
        need(settings.checkpoint_every >= 1, "checkpoint_every", "must be at least 1")
        need(settings.eval_train_examples >= 1, "eval_train_examples", "must be at least 1")
        need(settings.max_length >= 8, "max_length", "must be at least 8 tokens")
        need(settings.dtype in DTYPES, "dtype", f"must be one of {', '.join(DTYPES)}")
        need(bool(settings.model), "model", "must name a model")
        check_report_to(settings.report_to, f"{where}.report_to")
    elif isinstance(settings, AnalysisSettings):
        need(settings.samples_per_split >= 1, "samples_per_split", "must be at least 1")
        need(settings.seed >= 0, "seed", "must be 0 or more")
        check_players(settings.n_players, f"{where}.n_players")
        need(0 < settings.tau <= 1, "tau", "must be in (0, 1]")
        need(settings.salience in ("relative", "initial"), "salience", "must be relative or initial")
        need(settings.players in ("words", "phrases"), "players", "must be words or phrases")
        need(settings.noise_bound >= 0, "noise_bound", "must be at least 0")
        need(settings.baseline in ("mean", "pad", "zeros"), "baseline", "must be mean, pad or zeros")
        need(settings.engine in ("auto", "naive", "prefix"), "engine", "must be auto, naive or prefix")
        need(settings.stage_rule in ("cumulative", "crossover"), "stage_rule", "must be cumulative or crossover")
        need(0 < settings.stage_fraction <= 1, "stage_fraction", "must be in (0, 1]")
        need(0 < settings.short_stage <= 1, "short_stage", "must be in (0, 1]")
        need(settings.baseline_step is None or settings.baseline_step >= 0, "baseline_step", "must be a step (>= 0)")
        need(settings.batch_samples >= 1, "batch_samples", "must be at least 1")
        need(1 <= settings.threads <= 1024, "threads", "must be at least 1")
        need(settings.general_samples >= 0, "general_samples", "must be 0 or more")
        need(settings.whole_prompt_masks >= 0, "whole_prompt_masks", "must be 0 (skip R²) or more")
        need(settings.drift_limit is None or settings.drift_limit >= 4, "drift_limit", "must be at least 4 (or null: all)")
        need(not (settings.stop_rule == "best_within_drift" and not settings.drift), "stop_rule",
             "best_within_drift needs drift (analysis.drift: true)")
        need(settings.drift_dtype in ("auto", *DTYPES), "drift_dtype", f"must be auto or one of {', '.join(DTYPES)}")
        need(0 <= settings.max_knowledge_drop <= 1, "max_knowledge_drop", "must be in [0, 1]")
        need(0 <= settings.max_format_drift <= 1, "max_format_drift", "must be in [0, 1]")
        need(settings.stop_rule in STOP_RULES, "stop_rule", f"must be one of {', '.join(STOP_RULES)}")
        need(settings.dtype in DTYPES, "dtype", f"must be one of {', '.join(DTYPES)}")


def config_from_dict(raw: dict[str, Any], where: str = "config") -> TrainConfig:
    """A training config, naming any unknown key or wrongly typed value."""
    return build(TrainConfig, {} if raw is None else raw, where)


def run_config_from_dict(raw: dict[str, Any], where: str = "config") -> RunConfig:
    """A whole-job config: ``output_dir``, ``train``, ``baseline`` (overrides of ``train``, or null), ``analysis``."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise SftscopeError(f"{where}: expected a mapping of settings, got {type(raw).__name__} ({_short(raw)})")
    raw = dict(raw)
    known = {f.name for f in dataclasses.fields(RunConfig)}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise SftscopeError(f"{where}: unknown key {unknown[0]!r} (known: {', '.join(sorted(known))})")
    config = RunConfig()
    if "output_dir" in raw:
        config.output_dir = expand_user(_check_type(raw["output_dir"], "str", f"{where}.output_dir"))
    if "train" in raw:
        config.train = build(TrainConfig, raw["train"], f"{where}.train")
    if "baseline" in raw:
        config.baseline = raw["baseline"]
        if config.baseline is not None and not isinstance(config.baseline, dict):
            raise SftscopeError(f"{where}.baseline: expected a mapping of settings that override train "
                                f"(e.g. {{model: gemma3-270m}}) or null, got {type(config.baseline).__name__} "
                                f"({_short(config.baseline)})")
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


MAX_CONFIG_BYTES = 1_000_000  # a settings file is small; a larger one is a mistake (or an attack)
MAX_CONFIG_NODES = 100_000  # values after YAML aliases are expanded ("billion laughs" stops here)


class _ConfigLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that reads ``1e-4`` as a number (YAML 1.2, as TRL and transformers users write it),
    refuses a key given twice, and refuses alias expansions that would blow up memory."""


_ConfigLoader.yaml_implicit_resolvers = {k: list(v) for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()}
_ConfigLoader.add_implicit_resolver(  # 1e-4, 3E5, -2.5e+3: floats without a dot
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"), list("-+0123456789"))


def _check_size(node, where: str) -> None:
    """Count the values a document expands to (an alias counts as often as it is used)."""
    sizes: dict[int, int] = {}

    def size(item) -> int:
        key = id(item)
        if key in sizes:
            return sizes[key]
        sizes[key] = 1  # a recursive alias counts once: it cannot be built as plain data anyway
        if isinstance(item, yaml.MappingNode):
            total = 1 + sum(size(k) + size(v) for k, v in item.value)
        elif isinstance(item, yaml.SequenceNode):
            total = 1 + sum(size(v) for v in item.value)
        else:
            total = 1
        sizes[key] = min(total, MAX_CONFIG_NODES + 1)
        return sizes[key]

    if node is not None and size(node) > MAX_CONFIG_NODES:
        raise SftscopeError(f"{where}: expands to more than {MAX_CONFIG_NODES:,} values through YAML aliases; "
                            "a settings file needs far fewer (is it a YAML alias bomb?)")


def _check_duplicates(node, where: str) -> None:
    """A key given twice in one mapping is refused: YAML would keep the later value without a word."""
    seen_nodes: set[int] = set()
    stack = [node]
    while stack:
        item = stack.pop()
        if item is None or id(item) in seen_nodes:
            continue
        seen_nodes.add(id(item))
        if isinstance(item, yaml.MappingNode):
            keys: dict = {}
            for key, value in item.value:
                if isinstance(key, yaml.ScalarNode):
                    if key.value in keys:
                        raise SftscopeError(f"{where}:{key.start_mark.line + 1}: key {_short(key.value)} is given "
                                            f"twice (first on line {keys[key.value]}); keep one")
                    keys[key.value] = key.start_mark.line + 1
                stack += [key, value]
        elif isinstance(item, yaml.SequenceNode):
            stack += item.value


def parse_yaml(text: str, where: str):
    """The plain data of a YAML document, with the checks of ``_ConfigLoader`` (one-line errors)."""
    try:
        loader = _ConfigLoader(text)
        try:
            node = loader.get_single_node()
            _check_size(node, where)
            _check_duplicates(node, where)
            return None if node is None else loader.construct_document(node)
        finally:
            loader.dispose()
    except yaml.YAMLError as exc:
        raise SftscopeError(f"{where}: malformed YAML ({str(exc).splitlines()[0]})") from None
    except RecursionError:
        raise SftscopeError(f"{where}: nested too deeply or recursive through YAML aliases") from None


def read_yaml(path: str | os.PathLike) -> dict[str, Any]:
    """A YAML mapping from a file, with one-line errors for a missing, oversized or malformed file."""
    path = Path(os.path.expanduser(str(path)))
    if not path.exists():
        raise SftscopeError(f"config file not found: {path}")
    if not path.is_file():
        raise SftscopeError(f"{path}: not a regular file")
    if path.stat().st_size > MAX_CONFIG_BYTES:
        raise SftscopeError(f"{path}: {path.stat().st_size:,} bytes; a settings file is at most {MAX_CONFIG_BYTES:,}")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise SftscopeError(f"{path}: not UTF-8 text (byte {exc.object[exc.start]:#04x} at offset {exc.start})") from None
    raw = parse_yaml(text, str(path))
    return {} if raw is None else raw


def load_config(path: str | os.PathLike) -> TrainConfig:
    return config_from_dict(read_yaml(path), str(path))


# sftscope 0.1 stored these CSV-only defaults in every run's config.yaml; now format detection finds them.
LEGACY_DATA_DEFAULTS = {"prompt_column": "text", "response_column": "label", "template": "{text}"}


def load_trained_config(path: str | os.PathLike) -> TrainConfig:
    """The settings a run folder was trained with, also from a folder of sftscope 0.1 (``config.yaml``)."""
    raw = read_yaml(path)
    data = raw.get("data")
    if Path(path).name == "config.yaml" and isinstance(data, dict):
        for key, old_default in LEGACY_DATA_DEFAULTS.items():
            if data.get(key) == old_default:
                data[key] = None
    return config_from_dict(raw, str(path))


def load_run_config(path: str | os.PathLike) -> RunConfig:
    return run_config_from_dict(read_yaml(path), str(path))


def config_yaml(config) -> str:
    """The full settings of a config dataclass as YAML text."""
    return yaml.safe_dump(dataclasses.asdict(config), sort_keys=False)


# where a run is written and logged, and whether activations are recomputed, change no weights
UNTRACKED_TRAIN_KEYS = ("output_dir", "report_to", "gradient_checkpointing")


def changed_training_settings(stored: TrainConfig, wanted: TrainConfig) -> list[str]:
    """The dotted keys whose values differ between two training configs (weights-relevant keys only)."""
    def flat(value, prefix=""):
        if isinstance(value, dict):
            return {k: v for key, item in value.items() for k, v in flat(item, f"{prefix}{key}.").items()}
        return {prefix[:-1]: value}

    old, new = flat(dataclasses.asdict(stored)), flat(dataclasses.asdict(wanted))
    return sorted(k for k in set(old) | set(new)
                  if old.get(k) != new.get(k) and k.split(".")[0] not in UNTRACKED_TRAIN_KEYS)


def with_output_dir(config: TrainConfig, output_dir: str | os.PathLike) -> TrainConfig:
    """A copy of ``config`` writing into ``output_dir``."""
    config = copy.deepcopy(config)
    config.output_dir = str(output_dir)
    return config
