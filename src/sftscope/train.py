"""SFT runs the paper studies: TRL ``SFTTrainer`` + PEFT LoRA, checkpoints dense early.

A run folder holds ``checkpoint-<step>/`` (LoRA adapters only, safetensors),
``losses.csv`` (train and validation loss at every checkpoint, step 0
included: the validation split is the eval split a practitioner watches, and
the one the stopping rules see; the test split is scored only by the analysis)
and ``sftscope-config.yaml`` (the settings used). Step 0 is the model before any update.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
from pathlib import Path
from typing import Callable

from .config import TrainConfig, check_report_to, config_yaml, with_output_dir
from .console import attach_log_file
from .data import split_pairs, to_conversational, to_plain
from .errors import SftscopeError
from .store import RunFolder, apply_umask, claim, is_rank_zero, run_lock, write_losses, write_text

log = logging.getLogger(__name__)


def checkpoint_steps(total_steps: int, every: int, dense: bool = True) -> list[int]:
    """Step 0, then 1, 2, 4, ... below ``every`` (``dense``), then every ``every`` steps, and the last step."""
    if total_steps < 1:
        raise SftscopeError(f"a run needs at least one step, got {total_steps}")
    if every < 1:
        raise SftscopeError(f"checkpoint_every must be >= 1, got {every}")
    steps = {0, total_steps}
    power = 1
    while dense and power < min(every, total_steps):
        steps.add(power)
        power *= 2
    steps.update(range(every, total_steps + 1, every))
    return sorted(steps)


# --------------------------------------------------------------------------- the run


def _progress_callback(progress: Callable | None, desc: str):
    from transformers import TrainerCallback  # noqa: PLC0415

    class StepProgress(TrainerCallback):
        """One bar over the training steps; the Trainer's log dicts go to the log, not the terminal."""

        def __init__(self) -> None:
            self.bar = None

        def on_train_begin(self, args, state, control, **kwargs):
            if progress is not None and state.is_world_process_zero:
                self.bar = progress(total=state.max_steps, desc=desc)

        def on_step_end(self, args, state, control, **kwargs):
            if self.bar is not None:
                self.bar.update(state.global_step - self.bar.n)

        def on_log(self, args, state, control, logs=None, **kwargs):
            log.info("step %d: %s", state.global_step, logs)

        def on_train_end(self, args, state, control, **kwargs):
            if self.bar is not None:
                self.bar.close()

    return StepProgress()


EVAL_SPLITS = ("train", "validation")  # evaluated at every checkpoint; the test split only by task quality


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
            checkpoint = RunFolder(args.output_dir).checkpoint(state.global_step)
            if state.is_world_process_zero and checkpoint.is_dir():
                (checkpoint / "training_args.bin").unlink(missing_ok=True)
                apply_umask(checkpoint)
            return control

        def on_evaluate(self, args, state, control, metrics=None, **kwargs):
            row = self.rows.setdefault(state.global_step, {"step": state.global_step})
            for split in EVAL_SPLITS:
                if metrics and f"eval_{split}_loss" in metrics:
                    row[f"{split}_loss"] = float(metrics[f"eval_{split}_loss"])
            if state.is_world_process_zero:
                write_losses(losses_path, sorted(self.rows.values(), key=lambda r: r["step"]))

    return CheckpointSchedule()


def train(
    config: TrainConfig, *, model=None, tokenizer=None, callbacks: list | None = None,
    progress: Callable | None | str = "transformers",
) -> Path:
    """Run SFT with the checkpoint schedule; returns the run folder.

    ``model``/``tokenizer`` override ``config.model`` (tests pass tiny ones).
    ``progress``: ``"transformers"`` keeps the Trainer's own bars and printed
    logs; a tqdm-like factory shows one bar over the steps and sends the
    Trainer's log lines to the ``sftscope.train`` logger; ``None`` shows nothing.

    Everything that can fail on the user's input (data, labels, model, LoRA
    target modules, sequence lengths, a finished training under other
    settings) is checked before the folder is written. A training that
    finished under the same settings is not repeated.
    """
    from .models import check_available, load_model_and_tokenizer  # noqa: PLC0415
    from .quality import label_set  # noqa: PLC0415

    out = Path(config.output_dir).expanduser()
    config = with_output_dir(config, out)
    folder = RunFolder(out)
    splits = split_pairs(config.data)  # bad data is reported before anything is written
    label_set(splits, config.data.labels)  # responses outside data.labels, too
    check_report_to(config.report_to, "report_to", installed=True)
    if finished_training(folder, config):
        log.info("%s: training already done with these settings", out)
        return out
    if model is None:
        check_available(config.model)
        model, tokenizer = load_model_and_tokenizer(config.model, dtype=config.dtype,
                                                    trust_remote_code=config.trust_remote_code)
    check_target_modules(model, config.lora.target_modules)
    check_lengths(tokenizer, splits._asdict(), config.max_length)
    claim(out, "run")
    with run_lock(out):
        attach_log_file(folder.log)
        if is_rank_zero():
            folder.clear_training()  # what an earlier training wrote here, and only that
        trainer, steps = build_trainer(config, model=model, tokenizer=tokenizer, callbacks=callbacks,
                                       progress=progress)
        log.info("training %d steps; checkpoints at %s", steps[-1], steps)
        trainer.evaluate()  # step 0: the model before SFT (collective under multi-process training)
        if trainer.is_world_process_zero():
            trainer.model.save_pretrained(folder.checkpoint(0), safe_serialization=True)
            apply_umask(folder.checkpoint(0))
        trainer.train()
        if is_rank_zero():
            write_text(folder.done, "done\n")
    return out


def finished_training(folder: RunFolder, config: TrainConfig) -> bool:
    """True when ``folder`` holds a finished training under these settings; an error when it holds one under others.

    Checkpoints of another training are never removed to make room for a new
    one (a finished run is the user's result); an unfinished training under the
    same settings is restarted from step 0.
    """
    from .config import changed_training_settings, load_trained_config  # noqa: PLC0415

    trained = [step for step in _steps_on_disk(folder) if step > 0]
    if not trained or not folder.config.exists():
        return False
    changed = changed_training_settings(load_trained_config(folder.config), config)
    if changed:
        raise SftscopeError(f"{folder.root} holds a training with other settings ({', '.join(changed[:6])} differ): "
                            "use a new output_dir, or remove this one to train again")
    return folder.done.exists()


def _steps_on_disk(folder: RunFolder) -> list[int]:
    try:
        return list(folder.checkpoints())
    except SftscopeError:  # no checkpoints yet
        return []


def check_target_modules(model, targets: str | list[str]) -> None:
    """The LoRA target modules exist in the model (PEFT would fail only after the run folder is written)."""
    import re  # noqa: PLC0415

    if targets == "all-linear":
        return
    names = [name for name, _ in model.named_modules() if name]
    if isinstance(targets, str):
        if not any(re.fullmatch(targets, name) for name in names):
            raise SftscopeError(f"lora.target_modules {targets!r} matches no module of the model (a string is a "
                                f"regular expression over full names; e.g. {', '.join(_linear_names(model)[:4])})")
        return
    missing = [t for t in targets if not any(name == t or name.endswith("." + t) for name in names)]
    if missing:
        raise SftscopeError(f"lora.target_modules: {', '.join(map(repr, missing[:3]))} not in the model (its linear "
                            f"modules: {', '.join(_linear_names(model)[:8])}; or all-linear)")


def _linear_names(model) -> list[str]:
    import torch  # noqa: PLC0415

    return sorted({name.rsplit(".", 1)[-1] for name, module in model.named_modules()
                   if isinstance(module, torch.nn.Linear) and name})


def check_lengths(tokenizer, splits: dict[str, list], max_length: int) -> None:
    """Every example fits ``max_length`` tokens as TRL builds it; TRL would drop or cut the others without a word."""
    from .quality import encode  # noqa: PLC0415

    for split, pairs in splits.items():
        lengths = [sum(map(len, encode(tokenizer, pair, pair.response))) for pair in pairs]
        long = [i for i, n in enumerate(lengths) if n > max_length]
        if long:
            raise SftscopeError(f"{split} example {long[0]} is {lengths[long[0]]} tokens long, over max_length "
                                f"{max_length} ({len(long)} of {len(pairs)} {split} examples are): raise max_length "
                                "or shorten them")


def total_steps(config: TrainConfig, n_train: int) -> int:
    """Optimizer steps of a training: ``max_steps``, else the epochs over ``n_train`` examples (last batch partial)."""
    if config.max_steps > 0:
        return config.max_steps
    return math.ceil(n_train * config.epochs / (config.batch_size * config.gradient_accumulation_steps))


def build_trainer(
    config: TrainConfig, *, model=None, tokenizer=None, callbacks: list | None = None,
    progress: Callable | None | str = "transformers",
):
    """The configured ``SFTTrainer`` and its checkpoint steps (nothing trained yet); ``progress`` as in ``train``."""
    import torch  # noqa: PLC0415
    from peft import LoraConfig  # noqa: PLC0415
    from trl import SFTConfig  # noqa: PLC0415

    from .models import load_model_and_tokenizer  # noqa: PLC0415

    out = Path(config.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_text(RunFolder(out).config, config_yaml(config))
    train_pairs, validation_pairs, _ = split_pairs(config.data)  # the test split is never evaluated here
    if model is None:
        model, tokenizer = load_model_and_tokenizer(
            config.model, dtype=config.dtype, trust_remote_code=config.trust_remote_code
        )
    model.train()
    torch.manual_seed(config.seed)
    total = total_steps(config, len(train_pairs))
    steps = checkpoint_steps(total, config.checkpoint_every, config.dense_checkpoints)
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
        gradient_checkpointing=use_gradient_checkpointing(config.gradient_checkpointing),
        use_cpu=not torch.cuda.is_available(),
        disable_tqdm=progress != "transformers",
    )
    lora = LoraConfig(
        r=config.lora.r, lora_alpha=config.lora.alpha, lora_dropout=config.lora.dropout,
        target_modules=config.lora.target_modules, task_type="CAUSAL_LM",
    )
    schedule = _schedule_callback(steps, RunFolder(out).losses)
    as_dataset = to_conversational if getattr(tokenizer, "chat_template", None) else to_plain
    trainer = labelled_positions_trainer()(
        model=model,
        args=args,
        train_dataset=as_dataset(train_pairs),
        eval_dataset={"train": as_dataset(eval_train), "validation": as_dataset(validation_pairs)},
        processing_class=tokenizer,
        peft_config=lora,
        callbacks=[schedule, *(callbacks or [])],
    )
    trainer.create_model_card = lambda *args, **kwargs: None  # TRL would write README.md into the run folder
    if progress != "transformers":
        from transformers import PrinterCallback  # noqa: PLC0415

        trainer.remove_callback(PrinterCallback)  # it prints every log dict
        trainer.add_callback(_progress_callback(progress, f"train {Path(config.output_dir).name}"))
    return trainer, steps


def use_gradient_checkpointing(setting: bool | None) -> bool:
    """``train.gradient_checkpointing``; ``None``: on with a GPU (TRL's default, it saves memory), off on the CPU.

    Recomputing every layer's forward in the backward pass made a step of the demo's SmolLM2 run about 1.3 times
    as long on the 2-core CPU with the same losses (BENCHMARKS.md, "Training steps"); memory is rarely what runs
    out there.
    """
    import torch  # noqa: PLC0415

    return torch.cuda.is_available() if setting is None else setting


@contextlib.contextmanager
def labelled_positions_only():
    """While inside, TRL's fused LM head projects only the positions that have a label, on the CPU too.

    TRL runs the LM head only at labelled positions on CUDA and XPU; on other devices it projects every position
    through the vocabulary (fixed tile shapes for compiling backends) and zeroes the unlabelled ones afterwards.
    With a loss on the response only, that is the prompt's positions too: on the CPU it made a training step of
    the demo's SmolLM2 run 1.5 times as long and Gemma-3's (a 262k vocabulary) 3 times (BENCHMARKS.md). The
    choice is TRL's private ``_use_triton`` in ``trl.trainer.utils``; where a TRL version has none, every
    position is projected as before (same loss, slower) and the log says so.
    """
    import trl.trainer.utils as trl_utils  # noqa: PLC0415

    original = getattr(trl_utils, "_use_triton", None)
    if original is None:
        log.info("this TRL version projects every position through the LM head on the CPU (slower, same loss)")
        yield
        return
    trl_utils._use_triton = lambda device: device.type == "cpu" or original(device)
    try:
        yield
    finally:
        trl_utils._use_triton = original


@functools.cache
def labelled_positions_trainer():
    """TRL's ``SFTTrainer`` whose loss runs the LM head only at labelled positions (see labelled_positions_only)."""
    from trl import SFTTrainer  # noqa: PLC0415

    class LabelledPositionsSFTTrainer(SFTTrainer):
        """``SFTTrainer``; its loss (training and evaluation) projects only labelled positions, on any device."""

        def compute_loss(self, *args, **kwargs):
            with labelled_positions_only():
                return super().compute_loss(*args, **kwargs)

    return LabelledPositionsSFTTrainer
