"""What bfloat16 extraction does to the results that matter: the salient interactions, per sample.

For checkpoints of a finished SFT run (default: the first stopping-benchmark
run) and the first test prompts of its data set, the same games are computed
with the model in float32 and in bfloat16 (merged adapter, prefix engine,
same players), decomposed the same way, and compared:

- Jaccard agreement of the salient sets, |both| / |either|, per sample;
- the share of float32's salient interactions that bfloat16 keeps, with the same sign;
- the largest difference of v(S) over all masks.

    python benchmarks/dtype.py [--run benchmarks/.stopping-runs/emotions-64-s0/target] [--samples 8] [--players 8]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from sftscope.config import load_config
from sftscope.data import split_pairs
from sftscope.extract import Request, extract_many, select_players
from sftscope.models import load_checkpoint, load_model_and_tokenizer
from sftscope.store import RunFolder


def salient(result) -> dict:
    return {(i.kind, i.mask): np.sign(i.effect) for i in result.salient()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, default=Path(__file__).parent / ".stopping-runs/emotions-64-s0/target")
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--players", type=int, default=8)
    parser.add_argument("--steps", type=int, nargs="*", help="checkpoints (default: first, middle, last)")
    args = parser.parse_args(argv)

    folder = RunFolder(args.run)
    config = load_config(folder.config)
    checkpoints = folder.checkpoints()
    steps = args.steps or [min(checkpoints), sorted(checkpoints)[len(checkpoints) // 2], max(checkpoints)]
    _, test = split_pairs(config.data)
    pairs = test[: args.samples]
    base32, tok = load_model_and_tokenizer(config.model, dtype="float32")
    base16, _ = load_model_and_tokenizer(config.model, dtype="bfloat16")
    players = [select_players(base32, tok, p.prompt, p.response, args.players) for p in pairs]
    requests = [Request(p.prompt, p.response, pl) for p, pl in zip(pairs, players)]
    rows, times = [], {"float32": 0.0, "bfloat16": 0.0}
    for step in steps:
        results = {}
        for name, base in (("float32", base32), ("bfloat16", base16)):
            model = load_checkpoint(base, checkpoints[step])
            began = time.perf_counter()
            results[name] = extract_many(model, tok, requests)
            times[name] += time.perf_counter() - began
        for index, (full, half) in enumerate(zip(results["float32"], results["bfloat16"])):
            a, b = salient(full), salient(half)
            both = set(a) & set(b)
            same_sign = sum(a[k] == b[k] for k in both)
            rows.append({"step": step, "sample": index, "jaccard": len(both) / max(1, len(set(a) | set(b))),
                         "kept": same_sign / max(1, len(a)), "n32": len(a), "n16": len(b),
                         "max_dv": float(np.max(np.abs(full.values - half.values))),
                         "range": float(np.ptp(full.values))})
    print(f"{len(rows)} games (steps {steps}, {len(pairs)} test prompts, n = {args.players}); "
          f"extraction time float32 {times['float32']:.1f} s, bfloat16 {times['bfloat16']:.1f} s "
          f"(ratio {times['float32'] / times['bfloat16']:.2f}x)")
    jac = np.array([r["jaccard"] for r in rows])
    kept = np.array([r["kept"] for r in rows])
    print(f"salient-set agreement (Jaccard), per sample: mean {jac.mean():.2f}, median {np.median(jac):.2f}, "
          f"min {jac.min():.2f}; identical sets in {np.mean(jac == 1.0):.0%} of games")
    print(f"float32 salient interactions kept by bfloat16 with the same sign: mean {kept.mean():.2f}, min {kept.min():.2f}")
    print(f"salient interactions per game: float32 {np.mean([r['n32'] for r in rows]):.1f}, "
          f"bfloat16 {np.mean([r['n16'] for r in rows]):.1f}")
    print(f"largest |v32(S) - v16(S)|: median {np.median([r['max_dv'] for r in rows]):.3f}, "
          f"max {max(r['max_dv'] for r in rows):.3f} (the range of v(S) per game: median "
          f"{np.median([r['range'] for r in rows]):.2f})")
    for step in steps:
        part = [r for r in rows if r["step"] == step]
        print(f"  step {step}: Jaccard mean {np.mean([r['jaccard'] for r in part]):.2f}, kept mean "
              f"{np.mean([r['kept'] for r in part]):.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
