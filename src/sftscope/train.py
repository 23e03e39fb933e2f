"""SFT runs the paper studies: TRL ``SFTTrainer`` + PEFT LoRA, checkpoints dense early.

A run folder holds ``checkpoint-<step>/`` (LoRA adapters only, safetensors),
``losses.csv`` (train and test loss at every checkpoint, step 0 included) and
``sftscope-config.yaml`` (the settings used). Step 0 is the model before any update.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Callable

from .config import TrainConfig, config_yaml
from .console import attach_log_file
from .data import split_pairs, to_conversational, to_plain
from .errors import SftscopeError
from .store import RunFolder, claim, is_rank_zero, run_lock, write_losses, write_text

log = logging.getLogger(__name__)


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
            pickled = RunFolder(args.output_dir).checkpoint(state.global_step) / "training_args.bin"
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


def train(
    config: TrainConfig, *, model=None, tokenizer=None, callbacks: list | None = None,
    progress: Callable | None | str = "transformers",
) -> Path:
    """Run SFT with the checkpoint schedule; returns the run folder.

    ``model``/``tokenizer`` override ``config.model`` (tests pass tiny ones).
    ``progress``: ``"transformers"`` keeps the Trainer's own bars and printed
    logs; a tqdm-like factory shows one bar over the steps and sends the
    Trainer's log lines to the ``sftscope.train`` logger; ``None`` shows nothing.
    """
    from .models import check_available  # noqa: PLC0415

    out = Path(config.output_dir)
    folder = RunFolder(out)
    split_pairs(config.data)  # bad data is reported before anything is written
    if model is None:
        check_available(config.model)
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
        trainer.train()
    return out


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
    from trl import SFTConfig, SFTTrainer  # noqa: PLC0415

    from .models import load_model_and_tokenizer  # noqa: PLC0415

    out = Path(config.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_text(RunFolder(out).config, config_yaml(config))
    train_pairs, test_pairs = split_pairs(config.data)
    if model is None:
        model, tokenizer = load_model_and_tokenizer(
            config.model, dtype=config.dtype, trust_remote_code=config.trust_remote_code
        )
    model.train()
    torch.manual_seed(config.seed)
    total = total_steps(config, len(train_pairs))
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
        disable_tqdm=progress != "transformers",
    )
    lora = LoraConfig(
        r=config.lora.r, lora_alpha=config.lora.alpha, lora_dropout=config.lora.dropout,
        target_modules=config.lora.target_modules, task_type="CAUSAL_LM",
    )
    schedule = _schedule_callback(steps, RunFolder(out).losses)
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
    trainer.create_model_card = lambda *args, **kwargs: None  # TRL would write README.md into the run folder
    if progress != "transformers":
        from transformers import PrinterCallback  # noqa: PLC0415

        trainer.remove_callback(PrinterCallback)  # it prints every log dict
        trainer.add_callback(_progress_callback(progress, f"train {Path(config.output_dir).name}"))
    return trainer, steps
