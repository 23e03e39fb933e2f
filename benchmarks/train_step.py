"""Training steps as TRL runs them on the CPU against sftscope's way, in one run.

TRL's ``SFTTrainer`` on the CPU projects every position through the LM head
(it compacts to the labelled positions only on CUDA and XPU) and recomputes
every layer's forward in the backward pass (gradient checkpointing, its
default). sftscope's trainer projects only the labelled positions on any device
and, on the CPU, does not checkpoint (``train.gradient_checkpointing``). Both
ways run the demo's training (the shipped emotions data, 64 examples, batch 8,
LoRA r 16 on every linear layer, float32) for ``--steps`` steps after one
evaluation (32 training and 60 validation examples), each in its own fresh
interpreter, alternating, ``--repeats`` times. They must give the same losses::

    python benchmarks/train_step.py                                  # SmolLM2-135M and Gemma-3-270M, 10 steps
    python benchmarks/train_step.py --models smollm2-135m-instruct --steps 20 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys

CHILD = r"""
import contextlib, json, sys, tempfile, time
import torch
import sftscope.train as train_module
from sftscope.config import TrainConfig
from sftscope.jobs import pinned_threads
from sftscope.models import load_model_and_tokenizer

way, model_name, steps = sys.argv[1], sys.argv[2], int(sys.argv[3])
config = TrainConfig(model=model_name, max_steps=steps, checkpoint_every=10**6, dense_checkpoints=False,
                     output_dir=tempfile.mkdtemp(prefix="sftscope-train-step-"))
if way == "trl":  # TRL's own path: every position through the LM head, gradient checkpointing on
    train_module.labelled_positions_only = contextlib.nullcontext
    config.gradient_checkpointing = True
with pinned_threads(2):
    model, tokenizer = load_model_and_tokenizer(config.model, dtype=config.dtype)
    trainer, _ = train_module.build_trainer(config, model=model, tokenizer=tokenizer, progress=None)
    began = time.perf_counter()
    metrics = trainer.evaluate()
    evaluation = time.perf_counter() - began
    began = time.perf_counter()
    result = trainer.train()
    training = time.perf_counter() - began
print("RESULT " + json.dumps({"eval_s": evaluation, "train_s": training, "train_loss": result.training_loss,
                              "validation_loss": metrics["eval_validation_loss"],
                              "checkpointing": trainer.args.gradient_checkpointing}))
"""

WAYS = ("trl", "sftscope")


def one_run(way: str, model: str, steps: int) -> dict:
    done = subprocess.run([sys.executable, "-c", CHILD, way, model, str(steps)], capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"{way} on {model} failed: {done.stderr.strip().splitlines()[-1]}")
    return next(json.loads(line[7:]) for line in done.stdout.splitlines() if line.startswith("RESULT "))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["smollm2-135m-instruct", "gemma3-270m"])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args(argv)
    if args.steps < 1 or args.repeats < 1:
        parser.error("--steps and --repeats must be at least 1")
    print("| model | part | TRL's way | sftscope's | ratio | losses (TRL / sftscope) |")
    print("|---|---|---|---|---|---|")
    for model in args.models:
        runs = {way: [] for way in WAYS}
        for _ in range(args.repeats):
            for way in WAYS:
                runs[way].append(one_run(way, model, args.steps))
        for part, key, loss in (("evaluation", "eval_s", "validation_loss"), (f"{args.steps} steps", "train_s", "train_loss")):
            trl, ours = (statistics.median(r[key] for r in runs[way]) for way in WAYS)
            losses = " / ".join(f"{runs[way][0][loss]:.6f}" for way in WAYS)
            print(f"| {model} | {part} | {trl:.1f} s | {ours:.1f} s | **{trl / ours:.2f}x** | {losses} |")
        for way in WAYS:
            values = {(r["train_loss"], r["validation_loss"]) for r in runs[way]}
            if len(values) > 1:
                print(f"note: {way}'s losses differ between repeats: {sorted(values)}")


if __name__ == "__main__":
    main()
