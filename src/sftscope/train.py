"""SFT runs the paper studies: TRL ``SFTTrainer`` + PEFT LoRA, checkpoints dense early.

A run folder holds ``checkpoint-<step>/`` (LoRA adapters only, safetensors),
``losses.csv`` (train and test loss at every checkpoint, step 0 included) and
``config.yaml`` (the settings used). Step 0 is the model before any update.
"""

from __future__ import annotations

import csv
import dataclasses
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .data import Pair, load_splits, to_conversational, to_plain
from .errors import SftscopeError
from .interactions import atomic_write

log = logging.getLogger(__name__)


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


def checkpoint_steps(total_steps: int, every: int) -> list[int]:
    """Step 0, then 1, 2, 4, ... below ``every``, then every ``every`` steps, and the last step."""
    if total_steps < 1:
        raise SftscopeError(f"a run needs at least one step, got {total_steps}")
    if every < 1:
        raise SftscopeError(f"checkpoint_every must be >= 1, got {every}")
    steps = {0, total_steps}
    power = 1
    while power < min(every, total_steps):
        steps.add(power)
        power *= 2
    steps.update(range(every, total_steps + 1, every))
    return sorted(steps)


# --------------------------------------------------------------------------- config I/O


def config_from_dict(raw: dict[str, Any], where: str = "config") -> TrainConfig:
    """Build a config, naming any unknown key or wrongly typed value."""
    return _build(TrainConfig, raw or {}, where)


def _build(cls, raw: dict[str, Any], where: str):
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
            values[name] = _build(type(default), value, key)
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


def save_config(config: TrainConfig, path: Path) -> None:
    text = yaml.safe_dump(dataclasses.asdict(config), sort_keys=False)
    atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


# --------------------------------------------------------------------------- the run


def _schedule_callback(steps: list[int], losses_path: Path):
    from transformers import TrainerCallback  # noqa: PLC0415

    class CheckpointSchedule(TrainerCallback):
        """Save and evaluate exactly at the scheduled steps; keep the loss table on disk."""

        def __init__(self) -> None:
            self.rows: dict[int, dict[str, float]] = {}

        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step in steps:
                control.should_save = True
                control.should_evaluate = True
            return control

        def on_save(self, args, state, control, **kwargs):
            # Trainer pickles its arguments next to each checkpoint; we never load it, so keep no pickle.
            pickled = Path(args.output_dir) / f"checkpoint-{state.global_step}" / "training_args.bin"
            if state.is_world_process_zero and pickled.exists():
                pickled.unlink()
            return control

        def on_evaluate(self, args, state, control, metrics=None, **kwargs):
            row = self.rows.setdefault(state.global_step, {"step": state.global_step})
            for split in ("train", "test"):
                if metrics and f"eval_{split}_loss" in metrics:
                    row[f"{split}_loss"] = float(metrics[f"eval_{split}_loss"])
            if state.is_world_process_zero:
                write_losses(losses_path, sorted(self.rows.values(), key=lambda r: r["step"]))

    return CheckpointSchedule()


def write_losses(path: Path, rows: list[dict[str, float]]) -> None:
    def write(tmp: str) -> None:
        with open(tmp, "w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=["step", "train_loss", "test_loss"])
            writer.writeheader()
            writer.writerows(rows)

    atomic_write(path, write)


def read_losses(run_dir: str | os.PathLike) -> list[dict[str, float]]:
    path = Path(run_dir) / "losses.csv"
    if not path.exists():
        raise SftscopeError(f"{run_dir}: no losses.csv (not an sftscope run folder?)")
    with path.open(encoding="utf-8") as handle:
        return [{k: (int(v) if k == "step" else float(v)) for k, v in row.items() if v != ""} for row in csv.DictReader(handle)]


def split_pairs(config: TrainConfig) -> tuple[list[Pair], list[Pair]]:
    d = config.data
    train, test = load_splits(
        d.train, d.test, test_ratio=d.test_ratio, seed=d.seed, prompt_column=d.prompt_column,
        response_column=d.response_column, template=d.template, label_names=d.label_names,
    )
    if d.max_train_examples:
        train = train[: d.max_train_examples]
    if d.max_test_examples:
        test = test[: d.max_test_examples]
    if not train or not test:
        raise SftscopeError("empty split: both train and test need examples")
    return train, test


def train(config: TrainConfig, *, model=None, tokenizer=None, callbacks: list | None = None) -> Path:
    """Run SFT with the checkpoint schedule; returns the run folder.

    ``model``/``tokenizer`` override ``config.model`` (tests pass tiny ones).
    """
    from .lock import run_lock  # noqa: PLC0415

    out = Path(config.output_dir)
    with run_lock(out):
        trainer, steps = build_trainer(config, model=model, tokenizer=tokenizer, callbacks=callbacks)
        log.info("training %d steps; checkpoints at %s", steps[-1], steps)
        trainer.evaluate()  # step 0: the model before SFT (collective under multi-process training)
        if trainer.is_world_process_zero():
            trainer.model.save_pretrained(out / "checkpoint-0", safe_serialization=True)
        trainer.train()
    return out


def build_trainer(config: TrainConfig, *, model=None, tokenizer=None, callbacks: list | None = None):
    """The configured ``SFTTrainer`` and its checkpoint steps (nothing trained yet)."""
    import torch  # noqa: PLC0415
    from peft import LoraConfig  # noqa: PLC0415
    from trl import SFTConfig, SFTTrainer  # noqa: PLC0415

    from .models import load_model_and_tokenizer  # noqa: PLC0415

    out = Path(config.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_config(config, out / "config.yaml")
    train_pairs, test_pairs = split_pairs(config)
    if model is None:
        model, tokenizer = load_model_and_tokenizer(
            config.model, dtype=config.dtype, trust_remote_code=config.trust_remote_code
        )
    model.train()
    torch.manual_seed(config.seed)
    per_step = config.batch_size * config.gradient_accumulation_steps
    total = config.max_steps if config.max_steps > 0 else math.ceil(len(train_pairs) * config.epochs / per_step)
    steps = checkpoint_steps(total, config.checkpoint_every)
    eval_train = train_pairs[: config.eval_train_examples]
    args = SFTConfig(
        output_dir=str(out),
        learning_rate=config.learning_rate,
        warmup_steps=config.warmup_ratio,
        lr_scheduler_type=config.lr_scheduler,
        per_device_train_batch_size=config.batch_size,
        per_device_eval_batch_size=config.batch_size,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        max_steps=total,
        seed=config.seed,
        data_seed=config.seed,
        report_to=config.report_to or "none",
        save_strategy="no",  # the schedule callback decides
        eval_strategy="no",
        save_only_model=True,
        logging_steps=1,
        max_length=config.max_length,
        completion_only_loss=True,
        bf16=config.dtype == "bfloat16",
        use_cpu=not torch.cuda.is_available(),
        disable_tqdm=False,
    )
    lora = LoraConfig(
        r=config.lora.r, lora_alpha=config.lora.alpha, lora_dropout=config.lora.dropout,
        target_modules=config.lora.target_modules, task_type="CAUSAL_LM",
    )
    schedule = _schedule_callback(steps, out / "losses.csv")
    as_dataset = to_conversational if getattr(tokenizer, "chat_template", None) else to_plain
    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=as_dataset(train_pairs),
        eval_dataset={"train": as_dataset(eval_train), "test": as_dataset(test_pairs)},
        processing_class=tokenizer,
        peft_config=lora,
        callbacks=[schedule, *(callbacks or [])],
    )
    return trainer, steps


def checkpoint_dirs(run_dir: str | os.PathLike) -> dict[int, Path]:
    """``{step: folder}`` of a run's adapter checkpoints."""
    found = {}
    for path in Path(run_dir).glob("checkpoint-*"):
        suffix = path.name.split("-", 1)[1]
        if suffix.isdigit() and (path / "adapter_config.json").exists():
            found[int(suffix)] = path
    if not found:
        raise SftscopeError(f"{run_dir}: no checkpoints (checkpoint-<step>/adapter_config.json)")
    return dict(sorted(found.items()))


def load_checkpoint(base_model, checkpoint: str | os.PathLike):
    """The base model with a checkpoint's LoRA adapter merged in (for fast extraction).

    ``base_model`` is not modified: the adapter is applied to a copy.
    """
    import copy  # noqa: PLC0415

    from peft import PeftModel  # noqa: PLC0415

    path = Path(checkpoint)
    if not (path / "adapter_model.safetensors").exists():
        raise SftscopeError(f"{path}: no adapter_model.safetensors")
    merged = PeftModel.from_pretrained(copy.deepcopy(base_model), str(path)).merge_and_unload()
    return merged.eval()
