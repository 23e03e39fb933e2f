"""Stopping benchmark: which rule keeps the checkpoint a user should keep?

Eight LoRA SFT runs of SmolLM2-135M-Instruct on the 2-core CPU: two shipped
data sets of different tasks (``emotions``: five emotions of short comments;
``tickets``: which of five teams should handle a support message) x two
learning rates (1e-3, the default, and 3e-4) x two seeds, 64 training examples,
10 epochs (80 steps). Each run trains on the
data set's train split, evaluates on its validation split (the "eval" split:
the only data any rule sees besides the training data), and is analysed with
cheap settings (6 players, 4 probes per split). Every checkpoint is then
scored on the test split, which no rule sees: a rule's *regret* is the best
test accuracy of any checkpoint of the run minus the test accuracy of the
checkpoint the rule keeps, in accuracy points.

Rules with a threshold have it chosen on the seed-0 runs (the tuning half) and
are reported on the seed-1 runs (the held-out half); the default rule is the
one with the lowest mean regret on the held-out half (ties: the lower mean
compute fraction, then a rule without a tuned threshold). "Kept an earlier
checkpoint" counts the runs on which a rule did not simply keep the last one.

Runs are cached in ``--cache`` (default ``benchmarks/.stopping-runs``): a
rerun trains, extracts and scores only what is missing, then recomputes the
rules (seconds)::

    python benchmarks/stopping.py                     # all eight runs (about 4 hours the first time)
    python benchmarks/stopping.py --runs emotions-64-s0 tickets-64-s0
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from sftscope.config import AnalysisSettings, RunConfig, TrainConfig
from sftscope.data import embedded_split
from sftscope.jobs import QualityTask, quality_current
from sftscope.pipeline import run
from sftscope.quality import label_set, score_split
from sftscope.stopping import BENCHMARK_RECORD, ORACLE, rule_table, standard_rules
from sftscope.store import JobFolder, RunFolder, checkpoint_digest, load_effects, read_json, read_losses, write_json
from sftscope.summary import quality_table, run_signals

DATASETS = ("emotions", "tickets")
LEARNING_RATES = (1e-3, 3e-4)
SIZE = 64
SEEDS = (0, 1)
TUNING_SEED = 0
ANALYSIS = AnalysisSettings(samples_per_split=4, n_players=6)
GRIDS = {  # rule family -> {parameter value: keyword arguments of standard_rules}
    "cumulative": {f: {"fraction": f} for f in (0.5, 0.7, 0.8, 0.9, 0.95)},
    "cumulative_live": {f: {"fraction": f} for f in (0.5, 0.7, 0.8, 0.9, 0.95)},
    "boundary_then_eval_loss": {f: {"fraction": f} for f in (0.5, 0.7, 0.8, 0.9, 0.95)},
    "emergence_rho": {t: {"rho_threshold": t} for t in (0.1, 0.2, 0.3, 0.4, 0.5, 0.6)},
    "probe_utility_patience": {p: {"utility_patience": p} for p in (1, 2, 3)},
}


def run_name(dataset: str, learning_rate: float, seed: int) -> str:
    rate = "" if learning_rate == 1e-3 else f"-lr{learning_rate:g}"
    return f"{dataset}-{SIZE}{rate}-s{seed}"


def run_config(cache: Path, dataset: str, learning_rate: float, seed: int) -> RunConfig:
    config = RunConfig(output_dir=str(cache / run_name(dataset, learning_rate, seed)), baseline=None,
                       analysis=ANALYSIS)
    config.train = TrainConfig(model="smollm2-135m-instruct", seed=seed, eval_train_examples=32,
                               learning_rate=learning_rate)
    config.train.data.train = f"{dataset}:train"
    config.train.data.test = f"{dataset}:validation"  # the eval split: losses, probes and quality the rules see
    config.train.data.max_train_examples = SIZE
    return config


def heldout_scores(folder: RunFolder, dataset: str, cache: Path, model, tokenizer) -> pd.DataFrame:
    """Test-split accuracy of every checkpoint, cached beside the run (no rule sees these numbers)."""
    from sftscope.models import load_checkpoint  # noqa: PLC0415

    test = embedded_split(dataset, "test")
    labels = label_set(embedded_split(dataset, "train"), test)
    task = QualityTask(tuple(test), tuple(labels))
    store = RunFolder(cache / f"{folder.root.parent.name}-heldout")  # the benchmark's own folder
    rows = []
    for step, path in folder.checkpoints().items():
        digest = checkpoint_digest(path)
        unit = store.quality_unit("target", step)
        if not quality_current(store, "target", step, "smollm2-135m-instruct", digest, task):
            result = score_split(load_checkpoint(model, path), tokenizer, test, labels)
            write_json(unit, {"step": step, "inputs": task.inputs("smollm2-135m-instruct", digest), **result})
        rows.append({"step": step, "heldout_accuracy": read_json(unit)["accuracy"]})
    return pd.DataFrame(rows)


def load_run(cache: Path, dataset: str, learning_rate: float, seed: int, model, tokenizer, say) -> dict:
    """Train, analyse and score one run (whatever is missing); return its signals and held-out accuracies."""
    config = run_config(cache, dataset, learning_rate, seed)
    began = time.perf_counter()
    run(config, say=say)
    folder = JobFolder(config.output_dir).target
    manifest = read_json(folder.manifest)
    units = [folder.unit(u["model"], u["step"], u["sample"]) for u in manifest["complete_units"]]
    target = load_effects(folder.root, units)
    losses = pd.DataFrame(read_losses(folder.root))
    steps = list(folder.checkpoints())
    quality = quality_table(folder.root, steps, losses)
    heldout = heldout_scores(folder, dataset, cache, model, tokenizer)
    name = run_name(dataset, learning_rate, seed)
    say(f"{name}: ready in {time.perf_counter() - began:.0f} s")
    return {"name": name, "seed": seed, "dataset": dataset, "learning_rate": learning_rate,
            "signals": run_signals(target, losses, quality, ANALYSIS), "quality": quality, "heldout": heldout}


def judge(run_data: dict, rules: dict) -> dict[str, dict]:
    """Every rule's pick on one run, with its held-out accuracy and regret (points) and compute fraction."""
    table = rule_table(run_data["signals"], run_data["quality"], rules)
    heldout = run_data["heldout"].set_index("step")["heldout_accuracy"]
    best = float(heldout.max())
    out = {}
    for name, row in table.items():
        if name == ORACLE:  # the run's own oracle is on the eval split; the benchmark's is on the test split
            continue
        out[name] = {"step": row["step"], "heldout_accuracy": float(heldout[row["step"]]),
                     "regret": 100 * (best - float(heldout[row["step"]])), "compute_fraction": row["compute_fraction"],
                     "kept_earlier": row["step"] < run_data["signals"].steps[-1]}
    oracle = int(heldout[heldout == best].index.min())
    out["best_test_accuracy (oracle)"] = {"step": oracle, "heldout_accuracy": best, "regret": 0.0,
                                          "compute_fraction": 1.0,
                                          "kept_earlier": oracle < run_data["signals"].steps[-1]}
    return out


def tune(runs: list[dict]) -> dict[str, tuple]:
    """For each rule family with a threshold: the value with the lowest mean regret on these runs."""
    chosen = {}
    for family, grid in GRIDS.items():
        scored = []
        for value, kwargs in grid.items():
            rule = {family: standard_rules(**kwargs)[family]}
            results = [judge(r, rule)[family] for r in runs]
            scored.append((np.mean([x["regret"] for x in results]), np.mean([x["compute_fraction"] for x in results]),
                           value, kwargs))
        regret, fraction, value, kwargs = min(scored, key=lambda t: (t[0], t[1]))
        chosen[family] = (value, kwargs, regret)
    return chosen


def summarize(runs: list[dict], rules: dict) -> pd.DataFrame:
    per_run = [judge(r, rules) for r in runs]
    rows = []
    for name in per_run[0]:
        regrets = [p[name]["regret"] for p in per_run]
        rows.append({"rule": name, "mean_regret": np.mean(regrets), "worst_regret": np.max(regrets),
                     "mean_compute_fraction": np.mean([p[name]["compute_fraction"] for p in per_run]),
                     "kept_earlier": sum(p[name]["kept_earlier"] for p in per_run), "tuned": name in GRIDS,
                     "steps": " ".join(str(p[name]["step"]) for p in per_run)})
    # ties: less training needed first; then a rule without a tuned threshold (same picks, nothing fitted)
    order = ["mean_regret", "mean_compute_fraction", "tuned"]
    return pd.DataFrame(rows).sort_values(order, kind="stable").reset_index(drop=True)


def markdown(frame: pd.DataFrame) -> str:
    lines = ["| rule | mean regret (points) | worst regret | mean compute fraction | kept an earlier checkpoint | kept steps |",
             "|---|---|---|---|---|---|"]
    for r in frame.itertuples():
        lines.append(f"| {r.rule} | {r.mean_regret:.1f} | {r.worst_regret:.1f} | {r.mean_compute_fraction:.2f} | "
                     f"{r.kept_earlier} | {r.steps} |")
    return "\n".join(lines)


def package_record(runs: list[dict], heldout: list[dict], rules: dict, frame: pd.DataFrame, report: dict) -> dict:
    """What the report quotes: each offered rule's mean regret on the held-out half, and its kind."""
    offered = frame[~frame["rule"].str.contains("oracle") & (frame["rule"] != "recommended")]
    return {"command": "python benchmarks/stopping.py", "n_runs": len(runs),
            "datasets": sorted({r["dataset"] for r in runs}), "heldout_half": [r["name"] for r in heldout],
            "default_rule": report["default_rule"], "chosen_thresholds": report["chosen_thresholds"],
            "heldout_mean_regret": {r.rule: round(float(r.mean_regret), 2) for r in offered.itertuples()},
            "heldout_kept_earlier": {r.rule: int(r.kept_earlier) for r in offered.itertuples()},
            "kinds": {name: rule.kind for name, rule in rules.items()}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", type=Path, default=Path(__file__).parent / ".stopping-runs")
    parser.add_argument("--runs", nargs="*", help="run names to include (default: all eight)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "stopping.json")
    parser.add_argument("--record", type=Path, default=Path(__file__).parent.parent / "src" / "sftscope" / BENCHMARK_RECORD,
                        help="the compact record the report quotes (written only when every run is included)")
    args = parser.parse_args(argv)
    from sftscope.models import load_model_and_tokenizer  # noqa: PLC0415

    say = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
    model, tokenizer = load_model_and_tokenizer("smollm2-135m-instruct")
    specs = [s for s in itertools.product(DATASETS, LEARNING_RATES, SEEDS) if not args.runs or run_name(*s) in args.runs]
    runs = [load_run(args.cache, *spec, model, tokenizer, say) for spec in specs]

    tuning = [r for r in runs if r["seed"] == TUNING_SEED]
    heldout = [r for r in runs if r["seed"] != TUNING_SEED]
    chosen = tune(tuning) if tuning else {}
    rules = standard_rules()
    for family, (value, kwargs, _) in chosen.items():
        rules[family] = standard_rules(**kwargs)[family]
    report = {"runs": [r["name"] for r in runs], "tuning_half": [r["name"] for r in tuning],
              "heldout_half": [r["name"] for r in heldout],
              "chosen_thresholds": {k: v[0] for k, v in chosen.items()},
              "per_run": {r["name"]: judge(r, rules) for r in runs}}
    print(f"thresholds chosen on the tuning half ({', '.join(report['tuning_half'])}):",
          ", ".join(f"{k} = {v[0]}" for k, v in chosen.items()))
    for label, group in (("held-out half", heldout), ("all runs", runs)):
        if group:
            frame = summarize(group, rules)
            report[label] = frame.to_dict("records")
            print(f"\n{label} ({', '.join(r['name'] for r in group)}):\n{markdown(frame)}")
    if heldout:
        frame = summarize(heldout, rules)
        offered = frame[~frame["rule"].str.contains("oracle") & (frame["rule"] != "recommended")]
        report["default_rule"] = offered.iloc[0]["rule"]
        print(f"\nlowest mean regret on the held-out half: {report['default_rule']}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1, default=float), encoding="utf-8")
    print(f"written to {args.out}")
    if heldout and not args.runs:
        args.record.write_text(json.dumps(package_record(runs, heldout, rules, frame, report), indent=1) + "\n",
                               encoding="utf-8")
        print(f"written to {args.record}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
