"""Which players to use on long prompts: phrases against the top-n salient words and n random words, at equal n.

On the project's long prompts (``benchmarks/data/long_prompts.jsonl``,
Dolly-style instructions with a context and long support tickets, 20-200
words), for each prompt and each kind of player, with the embedded default
model (float32):

- coverage: ``v(N) - v(players masked)`` against ``v(N) - v(all content masked)``;
- whole-prompt R²: the AND-OR fit against the model on ``--masks`` random
  masks over all content units (free for phrases, which cover every word);
- time: choosing the players, then the game and its checks.

With ``--checkpoint`` (a LoRA adapter folder, e.g. the last checkpoint of
``sftscope demo --quick``), the same frozen players are extracted on the tuned
model too, and the paper's types (removed, preserved, emerged salient
interactions between the base model and the checkpoint) and the mean order
of the salient interactions are compared between the kinds.

    python benchmarks/players.py [--players 8] [--masks 256] [--limit N] [--only ID ...] [--kinds phrases "top words"] [--checkpoint DIR]

Prompts alternate between the two kinds (so ``--limit`` keeps both); measured
rows are cached in ``--out`` under their settings, so an interrupted run resumes.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from sftscope.dynamics import sample_types
from sftscope.extract import Request, extract_many, select_players
from sftscope.models import load_checkpoint, load_model_and_tokenizer

DATA = Path(__file__).parent / "data/long_prompts.jsonl"
KINDS = {"phrases": dict(kind="phrases"), "top words": dict(selection="ablation"),
         "random words": dict(selection="random")}


def salient(result) -> dict:
    return {(i.kind, i.mask): i.effect for i in result.salient()}


def mean_order(interactions: dict) -> float:
    return float(np.mean([bin(mask).count("1") for _, mask in interactions])) if interactions else float("nan")


def measure(base, tuned, tok, row: dict, kind: str, n: int, masks: int, seed: int) -> dict:
    began = time.perf_counter()
    players = select_players(base, tok, row["prompt"], row["completion"], n, seed=seed, allow_fewer=True,
                             **KINDS[kind])
    chose = time.perf_counter() - began
    request = Request(row["prompt"], row["completion"], players, row["id"])
    began = time.perf_counter()
    result = extract_many(base, tok, [request], whole_prompt_masks=masks, seed=seed)[0]
    extracted = time.perf_counter() - began
    out = {"id": row["id"], "kind": kind, "prompt_kind": row["kind"], "words": len(row["prompt"].split()),
           "n": len(players), **result.whole.as_row(), "select_s": chose, "extract_s": extracted}
    if tuned is not None:
        after = extract_many(tuned, tok, [request], whole_prompt_masks=0, seed=seed)[0]
        types = sample_types({0: salient(result), 1: salient(after)})[-1]
        out |= {"salient_base": len(salient(result)), "salient_tuned": len(salient(after)),
                "removed": len(types.removed), "preserved": len(types.preserved), "emerged": len(types.emerged),
                "order_base": mean_order(salient(result)), "order_tuned": mean_order(salient(after)),
                "tuned_coverage": after.whole.coverage}
    return out


def summary_rows(rows: list[dict], checkpoint: bool) -> list[str]:
    import pandas as pd  # noqa: PLC0415

    frame = pd.DataFrame(rows)
    frame["length"] = np.where(frame["words"] <= 80, "20-80 words", "81-200 words")
    frame["time_s"] = frame["select_s"] + frame["extract_s"]
    lines = ["| players | prompts | words | coverage (median) | coverage (IQR) | whole-prompt R² (median) | R² (IQR) "
             "| time per prompt (s, median) |", "|---|---|---|---|---|---|---|---|"]
    for (kind, length), g in list(frame.groupby(["kind", "length"])) + [((k, "all"), g) for k, g in
                                                                        frame.groupby("kind")]:
        q = lambda c: (g[c].median(), g[c].quantile(0.25), g[c].quantile(0.75))  # noqa: E731
        cov, r2 = q("coverage"), q("whole_r2")
        lines.append(f"| {kind} | {len(g)} | {length} | {cov[0]:.3f} | {cov[1]:.3f}-{cov[2]:.3f} | {r2[0]:.3f} | "
                     f"{r2[1]:.3f}-{r2[2]:.3f} | {g['time_s'].median():.1f} |")
    if checkpoint:
        lines += ["", "| players | salient (base) | removed | preserved | emerged | mean order base → tuned |",
                  "|---|---|---|---|---|---|"]
        for kind, g in frame.groupby("kind"):
            lines.append(f"| {kind} | {g['salient_base'].mean():.1f} | {g['removed'].mean():.1f} | "
                         f"{g['preserved'].mean():.1f} | {g['emerged'].mean():.1f} | "
                         f"{g['order_base'].mean():.2f} → {g['order_tuned'].mean():.2f} |")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--players", type=int, default=8)
    parser.add_argument("--masks", type=int, default=256)
    parser.add_argument("--limit", type=int, help="the first N prompts only")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--only", nargs="+", metavar="ID", help="these prompts only (ids of the data file)")
    parser.add_argument("--kinds", nargs="+", choices=list(KINDS), default=list(KINDS), help="the kinds to measure")
    parser.add_argument("--checkpoint", type=Path, help="a LoRA adapter folder: compare the paper's types too")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results/players.json")
    args = parser.parse_args(argv)

    rows_in = [json.loads(line) for line in DATA.read_text(encoding="utf-8").splitlines() if line.strip()]
    by_kind = [[r for r in rows_in if r["kind"] == k] for k in dict.fromkeys(r["kind"] for r in rows_in)]
    rows_in = [r for group in zip(*by_kind) for r in group]  # alternate the kinds: --limit keeps both
    rows_in = rows_in[: args.limit] if args.limit else rows_in
    if args.only:
        unknown = set(args.only) - {r["id"] for r in rows_in}
        if unknown:
            parser.error(f"no prompt with id {', '.join(sorted(unknown))} in {DATA}")
        rows_in = [r for r in rows_in if r["id"] in args.only]
    base, tok = load_model_and_tokenizer(args.model)
    tuned = load_checkpoint(base, args.checkpoint) if args.checkpoint else None
    done = json.loads(args.out.read_text()) if args.out.exists() else {}
    key = json.dumps({"model": args.model, "players": args.players, "masks": args.masks, "seed": args.seed,
                      "checkpoint": str(args.checkpoint)})
    cached = {(r["id"], r["kind"]): r for r in done.get(key, [])}  # resumable: rows already measured
    rows = []
    for i, row in enumerate(rows_in):
        for kind in args.kinds:
            if (row["id"], kind) not in cached:
                cached[(row["id"], kind)] = measure(base, tuned, tok, row, kind, args.players, args.masks, args.seed)
                done[key] = list(cached.values())
                args.out.parent.mkdir(parents=True, exist_ok=True)
                tmp = args.out.with_suffix(".tmp")
                tmp.write_text(json.dumps(done, indent=1))
                tmp.replace(args.out)
            r = cached[(row["id"], kind)]
            rows.append(r)
            print(f"[{i + 1}/{len(rows_in)}] {row['id']} {kind}: {r['words']} words, coverage {r['coverage']:.3f}, "
                  f"R² {r['whole_r2']:.3f}, {r['select_s'] + r['extract_s']:.1f} s", file=sys.stderr, flush=True)
    print(f"{len(rows_in)} prompts, n = {args.players}, {args.masks} masks, model {args.model}")
    print("\n".join(summary_rows(rows, tuned is not None)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
