"""Does a run's knowledge change hold under other scorings than ``acc_norm``? One run, three scorings.

Drift's ``knowledge`` picks the option with the highest log-likelihood per
character (lm-evaluation-harness's ``acc_norm``). A change in it could come
from the normalisation alone (a checkpoint that prefers short or long
options), so this scores the shipped items at the base model and at chosen
checkpoints of a run three ways, from the same log-likelihoods: per character
(``acc_norm``), summed (``acc``), per token; and how often each state picks
the shortest and the longest option::

    python benchmarks/knowledge_scoring.py RUN_FOLDER --steps 8 32 80
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np


def option_logliks(model, tokenizer, encoded, batch: int = 64) -> np.ndarray:
    """Each item's option log-likelihoods, in the batches drift's scorer forms (bfloat16 sums depend on them)."""
    from sftscope.drift import by_length  # noqa: PLC0415
    from sftscope.quality import pad_id, score_continuations  # noqa: PLC0415

    out = np.zeros((len(encoded), len(encoded[0][1])))
    for rows in by_length([(max(len(o) for o in options), len(c)) for c, options in encoded], batch):
        part = [encoded[i] for i in rows]
        out[rows] = score_continuations(model, pad_id(tokenizer), [c for c, _ in part], [o for _, o in part],
                                        batch_size=len(part)).loglik
    return out


def main(argv: list[str] | None = None) -> int:
    import torch  # noqa: PLC0415

    from sftscope.drift import encode_item, load_general_set  # noqa: PLC0415
    from sftscope.drift_jobs import drift_model, resolve_dtype  # noqa: PLC0415
    from sftscope.jobs import pinned_threads  # noqa: PLC0415
    from sftscope.models import load_checkpoint, load_model_and_tokenizer  # noqa: PLC0415
    from sftscope.store import RunFolder  # noqa: PLC0415

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", help="a run folder (its target/ holds the checkpoints)")
    parser.add_argument("--steps", type=int, nargs="+", required=True)
    parser.add_argument("--model", default="smollm2-135m-instruct", help="the run's base model")
    args = parser.parse_args(argv)
    folder = RunFolder(Path(args.run) / "target")
    missing = [step for step in args.steps if not (folder.checkpoint(step) / "adapter_model.safetensors").exists()]
    if missing:
        parser.error(f"{folder.root}: no checkpoint at step(s) {', '.join(map(str, missing))}")
    items = load_general_set().items
    with pinned_threads(2):
        model, tokenizer = load_model_and_tokenizer(args.model)
        base = drift_model(model, resolve_dtype("auto", model)).eval()  # as drift scores them
        encoded = [encode_item(tokenizer, item) for item in items]
        with torch.no_grad():
            logliks = {"base": option_logliks(base, tokenizer, encoded)}
            for step in args.steps:  # the adapter merged into the drift-dtype weights, as drift scores a checkpoint
                logliks[f"step {step}"] = option_logliks(load_checkpoint(base, folder.checkpoint(step)), tokenizer,
                                                         encoded)
    answer = np.array([item.answer for item in items])
    chars = np.array([[len(" " + c) for c in item.choices] for item in items])
    tokens = np.array([[len(o) for o in options] for _, options in encoded])
    print(f"{len(items)} items, {chars.shape[1]} options each; the answer is the shortest option on "
          f"{np.mean(chars.argmin(1) == answer):.0%}, the longest on {np.mean(chars.argmax(1) == answer):.0%}")
    print("| state | acc_norm (per character) | acc (summed) | per token | picks the shortest | picks the longest |")
    print("|---|---|---|---|---|---|")
    for name, loglik in logliks.items():
        pick = (loglik / chars).argmax(1)
        print(f"| {name} | {np.mean(pick == answer):.1%} | {np.mean(loglik.argmax(1) == answer):.1%} | "
              f"{np.mean((loglik / tokens).argmax(1) == answer):.1%} | {np.mean(pick == chars.argmin(1)):.0%} | "
              f"{np.mean(pick == chars.argmax(1)):.0%} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
