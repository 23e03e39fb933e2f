"""Prefix-shared against naive masked evaluation, same samples, one run.

    python benchmarks/engine.py [--model smollm2-135m-instruct] [--n 8 10] [--dtype float32 bfloat16]
                                [--samples 2] [--device cpu]

For each setting prints: tokens computed by each engine, the floor (what any
exact prefix sharing must compute), wall-time ratio, peak memory of each engine
(CUDA: max allocated; CPU: growth of the process's peak RSS), and the largest
difference between the two engines' values.
"""

from __future__ import annotations

import argparse
import resource
import time

import numpy as np
import torch

from sftscope import MaskedGame, NaiveEngine, PrefixEngine, baseline_vector, select_players
from sftscope.models import load_model_and_tokenizer
from sftscope.players import target_token, tokenize_prompt
from sftscope.prefix import floor_tokens

SAMPLES = [
    ("Classify the emotion of this comment: my flight got cancelled again, the airline staff were rude "
     "and nobody helped us at the airport tonight.", "anger"),
    ("Classify the emotion of this comment: we finally won the championship game after years of hard "
     "work, my friends and family cheered all night long!", "joy"),
    ("Classify the emotion of this comment: the doctor called late today about my test results and "
     "I cannot stop shaking while waiting for the news.", "fear"),
]


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run(engine, game, device) -> tuple[np.ndarray, float, float]:
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    before = peak_rss_mb()
    t0 = time.perf_counter()
    values = engine.values(game)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak = peak_rss_mb() - before
    return values, time.perf_counter() - t0, peak


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--n", type=int, nargs="+", default=[8, 10])
    parser.add_argument("--dtype", nargs="+", default=["float32", "bfloat16"])
    parser.add_argument("--samples", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    if args.device == "cpu":
        torch.set_num_threads(2)
    print(f"model {args.model}, device {args.device}, {args.samples} samples per setting")
    print("dtype     n  tokens naive  tokens prefix  floor   prefix/floor  time naive  time prefix  ratio"
          "  peak MB naive/prefix  max |diff|")
    for dtype in args.dtype:
        model, tokenizer = load_model_and_tokenizer(args.model, dtype=dtype, device=args.device)
        baseline = baseline_vector(model, tokenizer, "mean")
        for n in args.n:
            tot = dict(tn=0.0, tp=0.0, kn=0, kp=0, floor=0, mn=0.0, mp=0.0, diff=0.0)
            for prompt, response in SAMPLES[: args.samples]:
                players = select_players(model, tokenizer, prompt, response, n)
                rendered = tokenize_prompt(tokenizer, prompt)
                game = MaskedGame(tuple(rendered.input_ids), players.token_spans, target_token(tokenizer, response))
                prefix, naive = PrefixEngine(model, baseline), NaiveEngine(model, baseline)
                vp, tp, mp = run(prefix, game, args.device)  # prefix first: RSS peak growth is monotone
                vn, tn, mn = run(naive, game, args.device)
                tot["tn"] += tn
                tot["tp"] += tp
                tot["kn"] += naive.tokens_computed
                tot["kp"] += prefix.tokens_computed
                tot["floor"] += floor_tokens(game)
                tot["mn"] = max(tot["mn"], mn)
                tot["mp"] = max(tot["mp"], mp)
                tot["diff"] = max(tot["diff"], float(np.max(np.abs(vn - vp))))
            print(f"{dtype:9s} {n:2d}  {tot['kn']:12d}  {tot['kp']:13d}  {tot['floor']:5d}  "
                  f"{tot['kp'] / tot['floor']:12.2f}  {tot['tn']:9.1f}s  {tot['tp']:10.1f}s  {tot['tn'] / tot['tp']:5.1f}x"
                  f"  {tot['mn']:9.0f} / {tot['mp']:<9.0f}  {tot['diff']:.1e}")


if __name__ == "__main__":
    main()
