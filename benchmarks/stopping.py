"""Stopping benchmark: which rule keeps the checkpoint a user should keep, and what does its pick cost?

LoRA SFT runs of SmolLM2-135M-Instruct on the 2-core CPU over three data sets
of different domains (``emotions`` and ``tickets``, shipped; ``clinc``, five
topics of CLINC150 voice-assistant requests, built by ``benchmarks/make_clinc.py``),
two learning rates (1e-3, the default, and 3e-4), two training sizes (64 and
256 examples) and two seeds: 24 runs of ``MAX_STEPS`` steps each. Each run trains on the
train split, and every rule decides on the validation split (losses, accuracy,
validation probes) and the training run only. Every checkpoint is scored on
the test split, which no rule sees: a rule's *regret* is the best test
accuracy of any checkpoint of the run minus the test accuracy of the
checkpoint it keeps, in points. Each pick's drift (KL from the base model on
general answers, knowledge change, format drift) is the second axis.

Rules with a threshold have it chosen on the seed-0 runs (the tuning half) and
are judged on the seed-1 runs (the held-out half). Intervals are 95% bootstrap
intervals over the held-out runs. The default rule is the held-out winner only
where the paired interval of its regret difference to every other rule
excludes zero; otherwise the simplest rule that the winner is not separated
from (``SIMPLICITY``).

Runs are cached in ``--cache`` (default ``benchmarks/.stopping-runs``): a
rerun trains, extracts and scores only what is missing, then recomputes the
rules (seconds). Runs are made in ``order()``, seed pairs together, so that a
partial cache still covers every data set::

    python benchmarks/stopping.py                      # all 24 runs
    python benchmarks/stopping.py --max-runs 4         # the first four (timing)
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
from sftscope.drift_jobs import drift_table
from sftscope.pipeline import run
from sftscope.stopping import BENCHMARK_RECORD, ORACLE, rule_table, standard_rules
from sftscope.store import JobFolder, load_effects, read_json, read_losses
from sftscope.summary import drift_frame, quality_table, run_signals

HERE = Path(__file__).parent
CLINC = {split: str(HERE / "data" / f"clinc_{split}.jsonl") for split in ("train", "validation", "test")}
DATASETS = ("emotions", "tickets", "clinc")
LEARNING_RATES = (1e-3, 3e-4)
SIZES = (64, 256)
SEEDS = (0, 1)
TUNING_SEED = 0
MAX_STEPS = 48
CHECKPOINT_EVERY = 16  # checkpoints 0 1 2 4 8 16 32 48
# cheap analysis: 2 task probes per split and 2 general probes of 5 players; drift on 40 general prompts,
# 40 passages and 40 knowledge items spread over the shipped sets (the full sets cost ~1 min per checkpoint here);
# coverage on every result, but no whole-prompt R² (256 more masked prompts per result, which no rule reads)
ANALYSIS = AnalysisSettings(samples_per_split=2, n_players=5, general_samples=2, drift_limit=40, whole_prompt_masks=0)
DRIFT_AXES = ("kl", "knowledge_change", "format_drift")
GRIDS = {  # rule family -> {parameter value: keyword arguments of standard_rules}
    "cumulative": {f: {"fraction": f} for f in (0.5, 0.7, 0.8, 0.9, 0.95)},
    "cumulative_live": {f: {"fraction": f} for f in (0.5, 0.7, 0.8, 0.9, 0.95)},
    "boundary_then_eval_loss": {f: {"fraction": f} for f in (0.5, 0.7, 0.8, 0.9, 0.95)},
    "emergence_rho": {t: {"rho_threshold": t} for t in (0.1, 0.2, 0.3, 0.4, 0.5, 0.6)},
    "probe_utility_patience": {p: {"utility_patience": p} for p in (1, 2, 3)},
}
# the simplest first: nothing to compute, then what transformers does, then what needs drift or interactions
SIMPLICITY = ["last", "best_eval_loss", "best_eval_accuracy", "eval_loss_patience_1", "eval_loss_patience_2",
              "eval_accuracy_patience_2", "best_within_drift", "crossover", "cumulative", "cumulative_live",
              "emergence_rho", "probe_utility_patience", "boundary_then_eval_loss"]
BOOTSTRAP = 10_000


def run_name(dataset: str, learning_rate: float, size: int, seed: int) -> str:
    rate = "" if learning_rate == 1e-3 else f"-lr{learning_rate:g}"
    return f"{dataset}-{size}{rate}-s{seed}"


# the order runs are made in: seed pairs together; the first eight pairs give every data set both sizes and
# both learning rates (a partial cache stays balanced); the last four complete the 3 x 2 x 2 grid
PRIORITY = [("emotions", 1e-3, 64), ("tickets", 1e-3, 64), ("clinc", 1e-3, 64), ("emotions", 1e-3, 256),
            ("clinc", 3e-4, 64), ("tickets", 3e-4, 256), ("emotions", 3e-4, 64), ("clinc", 3e-4, 256),
            ("tickets", 1e-3, 256), ("emotions", 3e-4, 256), ("tickets", 3e-4, 64), ("clinc", 1e-3, 256)]


def order() -> list[tuple]:
    """Every run of the grid, in ``PRIORITY`` order, seed pairs together."""
    assert sorted(PRIORITY) == sorted(itertools.product(DATASETS, LEARNING_RATES, SIZES))
    return [(dataset, rate, size, seed) for dataset, rate, size in PRIORITY for seed in SEEDS]


def run_config(cache: Path, dataset: str, learning_rate: float, size: int, seed: int) -> RunConfig:
    config = RunConfig(output_dir=str(cache / run_name(dataset, learning_rate, size, seed)), baseline=None,
                       analysis=ANALYSIS)
    config.train = TrainConfig(model="smollm2-135m-instruct", seed=seed, eval_train_examples=16,
                               learning_rate=learning_rate, max_steps=MAX_STEPS, checkpoint_every=CHECKPOINT_EVERY)
    data = config.train.data
    if dataset == "clinc":
        data.train, data.validation, data.test = CLINC["train"], CLINC["validation"], CLINC["test"]
    else:
        data.train = dataset  # a shipped set: its own train, validation and test splits
    data.max_train_examples = size
    return config


def load_run(cache: Path, spec: tuple, say) -> dict:
    """Train, analyse and score one run (whatever is missing); return its signals, quality and drift."""
    dataset, learning_rate, size, seed = spec
    config = run_config(cache, *spec)
    began = time.perf_counter()
    run(config, say=say)
    folder = JobFolder(config.output_dir).target
    manifest = read_json(folder.manifest)
    units = [folder.unit(u["model"], u["step"], u["sample"]) for u in manifest["complete_units"]]
    effects = load_effects(folder.root, units)
    target = effects[effects["model"] == "target"]
    losses = pd.DataFrame(read_losses(folder.root))
    steps = list(folder.checkpoints())
    quality = quality_table(folder.root, steps, losses)
    drift = drift_frame(drift_table(folder, steps))
    summary = read_json(folder.summary)
    name = run_name(*spec)
    say(f"{name}: ready in {time.perf_counter() - began:.0f} s")
    return {"name": name, "seed": seed, "dataset": dataset, "learning_rate": learning_rate, "size": size,
            "signals": run_signals(target, losses, quality, ANALYSIS, drift=drift), "quality": quality,
            "drift": drift, "forgetting": (summary.get("drift") or {}).get("forgetting")}


def judge(run_data: dict, rules: dict) -> dict[str, dict]:
    """Every rule's pick on one run: its test accuracy, regret (points), compute fraction and drift."""
    table = rule_table(run_data["signals"], run_data["quality"], rules, run_data["drift"])
    test = run_data["quality"].set_index("step")["accuracy"]
    best = float(test.max())
    drift = run_data["drift"]
    last = run_data["signals"].steps[-1]
    out = {}
    for name, row in table.items():
        if row["step"] is None:
            continue
        step = row["step"]
        out[name] = {"step": step, "test_accuracy": float(test[step]), "regret": 100 * (best - float(test[step])),
                     "compute_fraction": row["compute_fraction"], "kept_earlier": step < last,
                     **{axis: float(drift.loc[step, axis]) for axis in DRIFT_AXES}}
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


def bootstrap_mean(values: np.ndarray, seed: int = 0) -> tuple[float, float]:
    """95% percentile bootstrap interval of the mean over runs."""
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, len(values), size=(BOOTSTRAP, len(values)))].mean(axis=1)
    return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def summarize(runs: list[dict], rules: dict) -> pd.DataFrame:
    per_run = [judge(r, rules) for r in runs]
    names = [n for n in per_run[0] if all(n in p for p in per_run)]
    rows = []
    for name in names:
        regrets = np.array([p[name]["regret"] for p in per_run])
        low, high = bootstrap_mean(regrets)
        row = {"rule": name, "mean_regret": float(regrets.mean()), "low": low, "high": high,
               "worst_regret": float(regrets.max()),
               "mean_compute_fraction": float(np.mean([p[name]["compute_fraction"] for p in per_run])),
               "kept_earlier": int(sum(p[name]["kept_earlier"] for p in per_run)), "tuned": name in GRIDS,
               "steps": " ".join(str(p[name]["step"]) for p in per_run)}
        for axis in DRIFT_AXES:
            row[f"mean_{axis}"] = float(np.mean([p[name][axis] for p in per_run]))
        rows.append(row)
    order_keys = ["mean_regret", "mean_compute_fraction", "tuned"]
    return pd.DataFrame(rows).sort_values(order_keys, kind="stable").reset_index(drop=True)


def paired_difference(per_run: list[dict], a: str, b: str) -> tuple[float, float, float]:
    """Mean regret of ``b`` minus ``a`` over the same runs (``judge`` of each), with its 95% bootstrap interval."""
    diff = np.array([p[b]["regret"] - p[a]["regret"] for p in per_run])
    low, high = bootstrap_mean(diff, seed=1)
    return float(diff.mean()), low, high


def choose_default(heldout: list[dict], rules: dict, frame: pd.DataFrame) -> dict:
    """The winner where it is separated from every other rule; otherwise the simplest rule it is not separated from."""
    offered = [r for r in frame["rule"] if r in SIMPLICITY]
    per_run = [judge(r, rules) for r in heldout]  # once: every pair below reads the same picks
    winner = offered[0]
    tied = [winner]
    differences = {}
    for other in offered[1:]:
        mean, low, high = paired_difference(per_run, winner, other)
        differences[other] = {"mean": round(mean, 2), "low": round(low, 2), "high": round(high, 2)}
        if low <= 0:  # the interval of (other - winner) reaches 0: not separated
            tied.append(other)
    simplest = min(tied, key=SIMPLICITY.index)
    separated = len(tied) == 1
    if separated:
        reason = f"{winner} has the lowest held-out mean regret and its paired interval excludes zero against every rule"
    else:
        reason = (f"{winner} has the lowest held-out mean regret, but its paired 95% interval does not separate it "
                  f"from {', '.join(t for t in tied if t != winner)}; {simplest} is the simplest of these")
    return {"winner": winner, "default_rule": simplest, "separated": separated, "not_separated_from": tied[1:],
            "differences_to_winner": differences, "reason": reason}


def markdown(frame: pd.DataFrame) -> str:
    lines = ["| rule | mean regret (points) | 95% interval | worst | compute fraction | kept earlier | "
             "mean KL of pick | knowledge change | format drift |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in frame.itertuples():
        lines.append(f"| {r.rule} | {r.mean_regret:.1f} | [{r.low:.1f}, {r.high:.1f}] | {r.worst_regret:.1f} | "
                     f"{r.mean_compute_fraction:.2f} | {r.kept_earlier} | {r.mean_kl:.3f} | "
                     f"{100 * r.mean_knowledge_change:+.1f} | {100 * r.mean_format_drift:+.1f} |")
    return "\n".join(lines)


def per_run_markdown(report: dict) -> str:
    """One row per run: the best checkpoint and what a few rules kept (test accuracy), and the forgetting correlations."""
    shown = ["last", "best_eval_loss", "best_eval_accuracy", "eval_loss_patience_2", "cumulative", "best_within_drift"]
    lines = ["| run | best checkpoint | " + " | ".join(shown) + " | r(removal, KL) | r(removal, knowledge) |",
             "|---" * (len(shown) + 4) + "|"]
    corr = {c["run"]: c for c in report["correlations"]}

    def cell(pick: dict | None) -> str:
        return "-" if pick is None else f"{pick['step']}: {100 * pick['test_accuracy']:.1f}%"

    def r(value) -> str:
        return "-" if value is None else f"{value:+.2f}"

    for name, picks in report["per_run"].items():
        best = picks.get(ORACLE)
        lines.append(f"| {name} | {cell(best)} | " + " | ".join(cell(picks.get(rule)) for rule in shown)
                     + f" | {r(corr[name]['corr_removal_vs_kl'])} | {r(corr[name]['corr_removal_vs_knowledge_change'])} |")
    return "\n".join(lines)


def correlations(runs: list[dict]) -> list[dict]:
    rows = []
    for r in runs:
        found = r["forgetting"] or {}
        rows.append({"run": r["name"], "corr_removal_vs_kl": found.get("corr_removal_vs_kl"),
                     "corr_removal_vs_knowledge_change": found.get("corr_removal_vs_knowledge_change")})
    return rows


def package_record(runs: list[dict], heldout: list[dict], frame: pd.DataFrame, report: dict, rules: dict) -> dict:
    """What the report quotes and the tests check: held-out regrets with intervals, drift, the default and why."""
    offered = frame[frame["rule"].isin(SIMPLICITY)]
    choice = report["choice"]
    return {"command": "python benchmarks/stopping.py", "n_runs": len(runs),
            "datasets": sorted({r["dataset"] for r in runs}), "heldout_half": [r["name"] for r in heldout],
            "default_rule": choice["default_rule"], "winner": choice["winner"], "separated": choice["separated"],
            "default_reason": choice["reason"], "simplicity": SIMPLICITY,
            "chosen_thresholds": report["chosen_thresholds"],
            "heldout_mean_regret": {r.rule: round(r.mean_regret, 2) for r in offered.itertuples()},
            "heldout_regret_interval": {r.rule: [round(r.low, 2), round(r.high, 2)] for r in offered.itertuples()},
            "heldout_drift": {r.rule: {axis: round(getattr(r, f"mean_{axis}"), 4) for axis in DRIFT_AXES}
                              for r in offered.itertuples()},
            "heldout_kept_earlier": {r.rule: int(r.kept_earlier) for r in offered.itertuples()},
            "kinds": {name: rule.kind for name, rule in rules.items()}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", type=Path, default=HERE / ".stopping-runs")
    parser.add_argument("--max-runs", type=int, help="only the first N runs of order() (default: all)")
    parser.add_argument("--cached-only", action="store_true", help="use the runs already finished in --cache")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "stopping.json")
    parser.add_argument("--record", type=Path, default=HERE.parent / "src" / "sftscope" / BENCHMARK_RECORD,
                        help="the compact record the report quotes (written only with at least 16 runs)")
    args = parser.parse_args(argv)
    say = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
    specs = order()[: args.max_runs]
    if args.cached_only:
        specs = [s for s in specs if (args.cache / run_name(*s) / "target" / "analysis" / "summary.json").exists()]
    runs = [load_run(args.cache, spec, say) for spec in specs]

    tuning = [r for r in runs if r["seed"] == TUNING_SEED]
    heldout = [r for r in runs if r["seed"] != TUNING_SEED]
    chosen = tune(tuning) if tuning else {}
    rules = standard_rules()
    for family, (value, kwargs, _) in chosen.items():
        rules[family] = standard_rules(**kwargs)[family]
    report = {"runs": [r["name"] for r in runs], "tuning_half": [r["name"] for r in tuning],
              "heldout_half": [r["name"] for r in heldout], "max_steps": MAX_STEPS,
              "analysis": {"samples_per_split": ANALYSIS.samples_per_split, "n_players": ANALYSIS.n_players,
                           "general_samples": ANALYSIS.general_samples, "drift_limit": ANALYSIS.drift_limit,
                           "whole_prompt_masks": ANALYSIS.whole_prompt_masks},
              "chosen_thresholds": {k: v[0] for k, v in chosen.items()},
              "per_run": {r["name"]: judge(r, rules) for r in runs}, "correlations": correlations(runs)}
    print(f"thresholds chosen on the tuning half ({len(tuning)} runs):",
          ", ".join(f"{k} = {v[0]}" for k, v in chosen.items()))
    frame = None
    for label, group in (("held-out half", heldout), ("all runs", runs)):
        if group:
            table = summarize(group, rules)
            report[label] = table.to_dict("records")
            print(f"\n{label} ({len(group)} runs):\n{markdown(table)}")
            frame = table if label == "held-out half" else frame
    if heldout:
        report["choice"] = choose_default(heldout, rules, frame)
        print(f"\n{report['choice']['reason']}: default {report['choice']['default_rule']}")
    print("\nper run (test accuracy of the kept checkpoint; general-prompt interaction removal against drift, "
          "Pearson r across checkpoints):\n" + per_run_markdown(report))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1, default=float), encoding="utf-8")
    print(f"written to {args.out}")
    if heldout and len(runs) >= 16:
        args.record.write_text(json.dumps(package_record(runs, heldout, frame, report, rules), indent=1) + "\n",
                               encoding="utf-8")
        print(f"written to {args.record}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
