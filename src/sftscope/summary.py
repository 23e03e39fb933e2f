"""A run's answer from its stored tables: dynamics, stage boundary, findings; written next to the effects."""

from __future__ import annotations

import os
from dataclasses import asdict

import numpy as np
import pandas as pd

from .config import AnalysisSettings
from .dynamics import dynamics_table, interval_flows, order_table, summarize
from .findings import early_late_quality, final_types, findings, utilities
from .stopping import StageRule, stage_boundary
from .store import RunFolder, load_effects, read_losses, write_json, write_manifest, write_table


def summarize_run(run_dir: str | os.PathLike, settings: AnalysisSettings) -> dict:
    """Dynamics, stage boundary, recommendation and findings from the stored effects."""
    folder = RunFolder(run_dir)
    effects = load_effects(run_dir)
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
    steps = sorted(int(s) for s in target["step"].unique())
    losses = pd.DataFrame(read_losses(run_dir))
    gap = losses.assign(gap=losses["test_loss"] - losses["train_loss"]).set_index("step")["gap"]
    emerged_total = table[table["type"] == "emerged"].groupby("step")["count"].mean()
    common = [s for s in emerged_total.index if s in gap.index]
    corr = float(np.corrcoef(emerged_total[common], gap[common])[0, 1]) if len(common) > 2 else float("nan")
    types = final_types(effects, boundary, tau=settings.tau, salience=settings.salience)
    emerged = early_late_quality(effects, types, tau=settings.tau, salience=settings.salience,
                                 baseline_step=settings.baseline_step)
    found = findings(table, flows, boundary, steps[-1], emerged)
    orders = order_table(target, **salience)
    for name, frame in (("dynamics", table), ("flows", flows), ("findings", found), ("per_sample", per_sample),
                        ("orders", orders)):
        write_table(folder.table(name), frame)
    summary = {
        "recommended_step": boundary,
        "stage_boundary_step": boundary,
        "stage_boundary_by_rule": by_rule,
        "min_test_loss_step": int(losses.loc[losses["test_loss"].idxmin(), "step"]),
        "loss_gap": {int(k): float(v) for k, v in gap.items()},
        "corr_emerged_vs_loss_gap": corr,
        "utility_cross_entropy": utilities(effects, types),
        "early_late_emerged": emerged,
        "findings": found.to_dict("records"),
        "checkpoints": steps,
        "settings": asdict(settings),
    }
    write_json(folder.summary, summary)
    write_manifest(run_dir)
    return summary
