"""A run's answer from its stored tables: quality, stopping rules, dynamics, stage boundary, findings."""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd

from .config import AnalysisSettings
from .dynamics import dynamics_table, interval_flows, order_table, probe_utility, summarize
from .errors import SftscopeError
from .findings import early_late_quality, final_types, findings, utilities
from .stopping import Signals, StageRule, rule_table, stage_boundary, standard_rules
from .store import RunFolder, load_effects, read_json, read_losses, write_json, write_manifest, write_table


def quality_table(run_dir: str | os.PathLike, steps: list[int], losses: pd.DataFrame) -> pd.DataFrame:
    """One row per checkpoint: test loss (the Trainer's), accuracy and macro-F1 (closed label sets), and more."""
    folder = RunFolder(run_dir)
    rows = []
    for step in steps:
        path = folder.quality_unit("target", step)
        stored = read_json(path) if path.exists() else {}
        rows.append({"step": step, **{k: stored.get(k) for k in ("accuracy", "macro_f1", "first_token_accuracy",
                                                                   "token_loss", "seconds")}})
    frame = pd.DataFrame(rows).merge(losses[["step", "test_loss"]], on="step", how="left")
    return frame[["step", "test_loss", "accuracy", "macro_f1", "first_token_accuracy", "token_loss", "seconds"]]


def run_signals(target: pd.DataFrame, losses: pd.DataFrame, quality: pd.DataFrame, settings: AnalysisSettings,
                flows: pd.DataFrame | None = None) -> Signals:
    """What the stopping rules see: eval loss and accuracy, interaction flows and probe utility, per checkpoint."""
    salience = dict(tau=settings.tau, mode=settings.salience)
    flows = interval_flows(target, **salience) if flows is None else flows
    steps = [int(s) for s in quality["step"]]
    return Signals(steps, losses.set_index("step")["test_loss"], flows, probe_utility(target, **salience),
                   flows.set_index("step")["emerged_rho"], quality.set_index("step")["accuracy"].astype(float))


def summarize_run(run_dir: str | os.PathLike, settings: AnalysisSettings, *, units: list[Path] | None = None,
                  steps: list[int] | None = None, labels: list[str] | None = None, extra: dict | None = None) -> dict:
    """Quality, rules, dynamics, stage boundary and findings from the stored results (``units``: the current ones).

    ``extra`` entries are added to the summary as they are.
    """
    folder = RunFolder(run_dir)
    effects = load_effects(run_dir, units)
    target = effects[effects["model"] == "target"]
    has_baseline = (effects["model"] == "baseline").any()
    salience = dict(tau=settings.tau, mode=settings.salience)
    per_sample = dynamics_table(
        effects, **salience, baseline_model="baseline" if has_baseline else None, baseline_step=settings.baseline_step,
    )
    table = summarize(per_sample)
    flows = interval_flows(target, **salience)
    boundary = stage_boundary(flows, StageRule(settings.stage_rule, settings.stage_fraction))
    by_rule = {
        "cumulative": stage_boundary(flows, StageRule("cumulative", settings.stage_fraction)),
        "crossover": stage_boundary(flows, StageRule("crossover")),
    }
    steps = steps or sorted(int(s) for s in target["step"].unique())
    losses = pd.DataFrame(read_losses(run_dir))
    quality = quality_table(run_dir, steps, losses)
    signals = run_signals(target, losses, quality, settings, flows)
    rules = rule_table(signals, quality, standard_rules(fraction=settings.stage_fraction))
    if settings.stop_rule not in rules:
        raise SftscopeError(f"analysis.stop_rule {settings.stop_rule!r} is unknown (known: {', '.join(rules)})")
    rules["recommended"] = {**rules[settings.stop_rule], "same_as": settings.stop_rule}
    gap = losses.assign(gap=losses["test_loss"] - losses["train_loss"]).set_index("step")["gap"]
    emerged_total = table[table["type"] == "emerged"].groupby("step")["count"].mean()
    common = [s for s in emerged_total.index if s in gap.index]
    pairs = emerged_total[common].to_numpy(), gap[common].to_numpy()
    corr = (float(np.corrcoef(*pairs)[0, 1]) if len(common) > 2 and min(np.std(pairs[0]), np.std(pairs[1])) > 0
            else None)  # undefined for fewer than 3 checkpoints or a constant series
    types = final_types(effects, boundary, tau=settings.tau, salience=settings.salience)
    emerged = early_late_quality(effects, types, tau=settings.tau, salience=settings.salience,
                                 baseline_step=settings.baseline_step)
    utility = utilities(effects, types)
    found = findings(table, flows, boundary, steps[-1], emerged, utility=utility, has_baseline=has_baseline,
                     rule=settings.stage_rule, short_stage=settings.short_stage)
    orders = order_table(target, **salience)
    for name, frame in (("dynamics", table), ("flows", flows), ("findings", found), ("per_sample", per_sample),
                        ("orders", orders), ("quality", quality)):
        write_table(folder.table(name), frame)
    summary = {
        "recommended_step": rules["recommended"]["step"],
        "recommended_rule": settings.stop_rule,
        "rules": rules,
        "quality": _records(quality),
        "labels": labels,
        "eval_split": "test (the same split is the rules' eval split and the quality split)",
        "stage_boundary_step": boundary,
        "stage_boundary_by_rule": by_rule,
        "min_test_loss_step": int(losses.loc[losses["test_loss"].idxmin(), "step"]),
        "loss_gap": {int(k): float(v) for k, v in gap.items()},
        "corr_emerged_vs_loss_gap": corr,
        "utility_cross_entropy": utility,
        "early_late_emerged": emerged,
        "findings": found.to_dict("records"),
        "checkpoints": steps,
        "settings": asdict(settings),
        **(extra or {}),
    }
    write_json(folder.summary, summary)
    write_manifest(run_dir, units)
    return summary


def _records(frame: pd.DataFrame) -> list[dict]:
    """Rows as JSON-ready dicts: NaN becomes null."""
    return json.loads(frame.to_json(orient="records"))
