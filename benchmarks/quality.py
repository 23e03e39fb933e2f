"""Task-quality scoring: the shared-prompt way sftscope uses against the plain way, on the same checkpoint.

Plain: one forward pass per (prompt, label) sequence, every label scored by the
log-likelihood of its completion. Ours (``quality.score_split``): prompts in
batches, each prompt computed once and its key/value cache shared by all the
label continuations. Both give the same scores (checked here, and in
tests/test_quality.py); the ratio of their times is the result.

    python benchmarks/quality.py [--examples 60] [--checkpoint PATH]
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np
import torch

from sftscope.data import load_splits
from sftscope.models import load_checkpoint, load_model_and_tokenizer
from sftscope.quality import encode, label_set, score_split


@torch.no_grad()
def plain_scores(model, tokenizer, pairs, labels) -> np.ndarray:
    out = np.zeros((len(pairs), len(labels)))
    for i, pair in enumerate(pairs):
        for k, label in enumerate(labels):
            prompt, completion = encode(tokenizer, pair, label)
            logp = torch.log_softmax(model(torch.tensor([prompt + completion])).logits[0].float(), dim=-1)
            out[i, k] = sum(float(logp[len(prompt) - 1 + j, t]) for j, t in enumerate(completion))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=60)
    parser.add_argument("--checkpoint", help="a LoRA checkpoint folder (default: the base model)")
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    model, tokenizer = load_model_and_tokenizer("smollm2-135m-instruct")
    if args.checkpoint:
        model = load_checkpoint(model, args.checkpoint)
    train, test = load_splits("emotions")
    pairs, labels = test[: args.examples], label_set(train, test)
    score_split(model, tokenizer, pairs[:4], labels)  # warm-up
    began = time.perf_counter()
    ours = score_split(model, tokenizer, pairs, labels)
    ours_s = time.perf_counter() - began
    began = time.perf_counter()
    plain = plain_scores(model, tokenizer, pairs, labels)
    plain_s = time.perf_counter() - began
    accuracy = float(np.mean(plain.argmax(axis=1) == np.array([labels.index(p.response) for p in pairs])))
    print(f"{len(pairs)} prompts x {len(labels)} labels: plain {plain_s:.1f} s, shared prompt {ours_s:.1f} s, "
          f"ratio {plain_s / ours_s:.1f}x; accuracy {ours['accuracy']:.3f} (plain {accuracy:.3f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
