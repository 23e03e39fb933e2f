"""Prefix-shared against naive masked evaluation, same samples, one run.

    python benchmarks/engine.py [--model smollm2-135m-instruct] [--n 8 10] [--dtype float32 bfloat16]
                                [--samples 2] [--device cpu]

For each setting prints: tokens computed by each engine, the floor (what any
exact prefix sharing must compute), wall-time ratio, peak memory of each engine
(CUDA: max allocated; CPU: peak growth of the resident set, sampled every 50 ms; a sampling thread costs the timed run some speed on 2 cores), and the largest
difference between the two engines' values. Then the same samples once more
through the prefix engine as one batch (``values_batch``): time against one
sample after another, and the largest difference.
"""

from __future__ import annotations

import argparse
import os
import threading
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


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


class RssPeak:
    """Samples the resident set every 50 ms: peak growth over the starting RSS."""

    def __enter__(self):
        self.start = self.peak = rss_mb()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self):
        while not self._stop.wait(0.05):
            self.peak = max(self.peak, rss_mb())

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.growth = self.peak - self.start


def run(engine, game, device) -> tuple[np.ndarray, float, float]:
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    with RssPeak() as rss:
        t0 = time.perf_counter()
        values = engine.values(game)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        elapsed = time.perf_counter() - t0
    peak = torch.cuda.max_memory_allocated() / 2**20 if device.startswith("cuda") else rss.growth
    return values, elapsed, peak


def batched(model, baseline, games, device, singles) -> tuple[float, float]:
    """Wall time of one ``values_batch`` call over all games, and its largest difference to one by one."""
    engine = PrefixEngine(model, baseline)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    together = engine.values_batch(games)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - t0
    return elapsed, max(float(np.max(np.abs(a - b))) for a, b in zip(together, singles))


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
    batch_rows = []
    for dtype in args.dtype:
        model, tokenizer = load_model_and_tokenizer(args.model, dtype=dtype, device=args.device)
        baseline = baseline_vector(model, tokenizer, "mean")
        for n in args.n:
            tot = dict(tn=0.0, tp=0.0, kn=0, kp=0, floor=0, mn=0.0, mp=0.0, diff=0.0)
            games, singles = [], []
            for prompt, response in SAMPLES[: args.samples]:
                players = select_players(model, tokenizer, prompt, response, n)
                rendered = tokenize_prompt(tokenizer, prompt)
                game = MaskedGame(tuple(rendered.input_ids), players.token_spans, target_token(tokenizer, response))
                prefix, naive = PrefixEngine(model, baseline), NaiveEngine(model, baseline)
                vp, tp, mp = run(prefix, game, args.device)
                games.append(game)
                singles.append(vp)
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
            batch_rows.append((dtype, n, tot["tp"], *batched(model, baseline, games, args.device, singles)))
    print("\nprefix engine, the same samples as one batch (values_batch) vs one after another")
    print("dtype     n  one by one  batched  ratio  max |diff|")
    for dtype, n, t_single, t_batch, diff in batch_rows:
        print(f"{dtype:9s} {n:2d}  {t_single:9.1f}s  {t_batch:6.1f}s  {t_single / t_batch:5.2f}x  {diff:.1e}")


if __name__ == "__main__":
    main()
