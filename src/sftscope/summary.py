"""A run's answer from its stored tables: quality, drift, stopping rules, dynamics, stage boundary, findings.

The stopping rules see the validation split and the training run only
(``run_signals``); the test split's numbers are added to each rule's pick for
the report. Dynamics, boundary and findings are computed on the task probes
(train and validation); the general probes are summarised on their own.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd

from .config import AnalysisSettings
from .drift_jobs import drift_table
from .dynamics import dynamics_table, interval_flows, order_table, probe_utility, summarize
from .errors import SftscopeError
from .findings import early_late_quality, final_types, findings, utilities
from .probes import TASK_SPLITS
from .stopping import Signals, StageRule, rule_table, stage_boundary, standard_rules
from .store import RunFolder, load_effects, read_json, read_losses, write_json, write_manifest, write_table

QUALITY_COLUMNS = ("accuracy", "macro_f1", "first_token_accuracy", "token_loss", "seconds")


def quality_table(run_dir: str | os.PathLike, steps: list[int], losses: pd.DataFrame) -> pd.DataFrame:
    """One row per checkpoint: test accuracy, macro-F1 and loss (the report's), validation accuracy and loss (the rules').

    ``test_loss`` is the per-token loss of the test responses from task-quality
    scoring; ``validation_loss`` is the Trainer's evaluation loss (what a
    practitioner's eval loss is, and what the live monitor sees).
    """
    folder = RunFolder(run_dir)
    rows = []
    for step in steps:
        row = {"step": step}
        for split in ("test", "validation"):
            path = folder.quality_unit("target", step, split)
            stored = read_json(path) if path.exists() else {}
            prefix = "" if split == "test" else "validation_"
            row.update({f"{prefix}{k}": stored.get(k) for k in QUALITY_COLUMNS})
        rows.append(row)
    frame = pd.DataFrame(rows)
    frame["test_loss"] = frame.pop("token_loss")
    eval_loss = losses.set_index("step")["validation_loss"] if "validation_loss" in losses else pd.Series(dtype=float)
    frame["validation_loss"] = frame["step"].map(eval_loss)
    ordered = ["step", "accuracy", "macro_f1", "test_loss", "validation_accuracy", "validation_loss",
               "first_token_accuracy", "validation_macro_f1", "seconds", "validation_seconds"]
    return frame[[c for c in ordered if c in frame]]


def drift_frame(rows: list[dict]) -> pd.DataFrame | None:
    """Per step (index): KL, knowledge change and drop, label share, format drift, agreement, NLL change."""
    present = [r for r in rows if not r.get("missing")]
    if not present:
        return None
    frame = pd.DataFrame([{
        "step": r["step"], "kl": r["kl"]["mean"], "kl_low": r["kl"]["low"], "kl_high": r["kl"]["high"],
        "general_nll_change": r["general_nll"]["change"], "knowledge": r["knowledge"]["checkpoint"],
        "knowledge_change": r["knowledge"]["change"], "knowledge_low": r["knowledge"]["low"],
        "knowledge_high": r["knowledge"]["high"], "knowledge_lost": r["knowledge"]["lost"],
        "knowledge_gained": r["knowledge"]["gained"], "label_share": r["format"]["label_share"],
        "agreement": r["format"]["agreement"],
    } for r in present]).set_index("step").sort_index()
    frame["knowledge_drop"] = -frame["knowledge_change"]
    base_share = present[0]["format"].get("base_label_share")
    frame["format_drift"] = frame["label_share"] - base_share if base_share is not None else np.nan
    return frame


def run_signals(target: pd.DataFrame, losses: pd.DataFrame, quality: pd.DataFrame, settings: AnalysisSettings,
                flows: pd.DataFrame | None = None, drift: pd.DataFrame | None = None) -> Signals:
    """What the stopping rules see: validation loss and accuracy, task-probe flows and validation-probe utility, drift.

    Never the test split: ``quality``'s test columns are not read.
    """
    salience = dict(tau=settings.tau, mode=settings.salience)
    task = target[target["split"].isin(TASK_SPLITS)]
    flows = interval_flows(task, **salience) if flows is None else flows
    steps = sorted({int(s) for s in quality["step"]} | {int(s) for s in losses["step"]})
    eval_loss = losses.set_index("step")["validation_loss"].astype(float) if "validation_loss" in losses else None
    if eval_loss is None:
        raise SftscopeError("the loss table has no validation loss: the rules would have no eval split")
    accuracy = quality.set_index("step")["validation_accuracy"].astype(float)
    return Signals(steps, eval_loss, flows if not flows.empty else None, probe_utility(task, split="validation", **salience),
                   flows.set_index("step")["emerged_rho"] if not flows.empty else None,
                   accuracy if accuracy.notna().any() else None, drift)


def general_removal(per_sample: pd.DataFrame) -> pd.Series:
    """Per step: the share of the base model's salient interactions on general prompts that SFT has removed."""
    general = per_sample[per_sample["split"] == "general"]
    if general.empty:
        return pd.Series(dtype=float)
    counts = general.pivot_table(index=["sample", "step"], columns="type", values="count", aggfunc="sum").fillna(0)
    initial = counts["removed"] + counts["preserved"]  # Omega_0 = P_t + R_t
    share = (counts["removed"] / initial.where(initial > 0)).groupby(level="step").mean()
    return share.rename("general_removed_share")


def _paired(a: pd.Series, b: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    common = a.dropna().index.intersection(b.dropna().index)
    return a[common].to_numpy(dtype=float), b[common].to_numpy(dtype=float)


def correlation_gap(a: pd.Series, b: pd.Series, names: tuple[str, str] = ("the first", "the second")) -> str | None:
    """Why Pearson r of ``a`` and ``b`` across checkpoints is undefined, in words for the answer; None where it is not."""
    x, y = _paired(a, b)
    if len(x) < 3:
        return "fewer than 3 checkpoints have both"
    for name, values in ((names[1], y), (names[0], x)):
        if np.std(values) == 0:
            return f"{name} is {values[0]:.3g} at all {len(values)} checkpoints"
    return None


def correlation(a: pd.Series, b: pd.Series) -> float | None:
    """Pearson r across the checkpoints both have; None where ``correlation_gap`` names a reason."""
    if correlation_gap(a, b) is not None:
        return None
    return float(np.corrcoef(*_paired(a, b))[0, 1])


def forgetting_summary(removal: pd.Series, drift: pd.DataFrame) -> dict:
    """General-prompt interaction removal per step, its correlation with KL and knowledge change, and why one is
    undefined (``drift``: per step, ``kl`` and ``knowledge_change``)."""
    out = {"general_removed_share": {int(k): float(v) for k, v in removal.items()}}
    for column, name in (("kl", "the KL"), ("knowledge_change", "the knowledge change")):
        out[f"corr_removal_vs_{column}"] = correlation(removal, drift[column])
        out[f"why_no_corr_removal_vs_{column}"] = correlation_gap(removal, drift[column], ("the removal", name))
    return out


WHOLE_COLUMNS = ("coverage", "whole_r2", "players_effect", "content_effect", "units", "whole_masks")


def whole_prompt_table(effects: pd.DataFrame) -> pd.DataFrame:
    """Per model, checkpoint and split: the median coverage and whole-prompt R² of its results (wholeprompt.py).

    Empty for units stored before these checks existed (they are recomputed when their inputs change).
    """
    if not set(WHOLE_COLUMNS) <= set(effects.columns):
        return pd.DataFrame(columns=["model", "step", "split", "results", "coverage", "whole_r2", "units", "whole_masks"])
    per_unit = effects.drop_duplicates(["model", "step", "sample"])
    grouped = per_unit.groupby(["model", "step", "split"])
    return grouped.agg(results=("sample", "size"), coverage=("coverage", "median"), whole_r2=("whole_r2", "median"),
                       units=("units", "median"), whole_masks=("whole_masks", "max")).reset_index()


def summarize_run(run_dir: str | os.PathLike, settings: AnalysisSettings, *, units: list[Path] | None = None,
                  steps: list[int] | None = None, labels: list[str] | None = None, extra: dict | None = None) -> dict:
    """Quality, drift, rules, dynamics, stage boundary and findings from the stored results (``units``: the current ones).

    ``extra`` entries are added to the summary as they are.
    """
    folder = RunFolder(run_dir)
    effects = load_effects(run_dir, units)
    target = effects[effects["model"] == "target"]
    task_effects = effects[effects["split"].isin(TASK_SPLITS)]
    task = task_effects[task_effects["model"] == "target"]
    has_baseline = (effects["model"] == "baseline").any()
    salience = dict(tau=settings.tau, mode=settings.salience)
    per_sample = dynamics_table(
        effects, **salience, baseline_model="baseline" if has_baseline else None, baseline_step=settings.baseline_step,
    )
    table = summarize(per_sample)
    task_table = summarize(per_sample[per_sample["split"].isin(TASK_SPLITS)], by_split=False)
    flows = interval_flows(task, **salience)
    boundary = stage_boundary(flows, StageRule(settings.stage_rule, settings.stage_fraction))
    by_rule = {
        "cumulative": stage_boundary(flows, StageRule("cumulative", settings.stage_fraction)),
        "crossover": stage_boundary(flows, StageRule("crossover")),
    }
    steps = steps or sorted(int(s) for s in target["step"].unique())
    losses = pd.DataFrame(read_losses(run_dir))
    quality = quality_table(run_dir, steps, losses)
    drift_rows = drift_table(folder, steps) if settings.drift else []
    drift = drift_frame(drift_rows)
    signals = run_signals(target, losses, quality, settings, flows, drift)
    rules = rule_table(signals, quality, standard_rules(
        fraction=settings.stage_fraction, max_knowledge_drop=settings.max_knowledge_drop,
        max_format_drift=settings.max_format_drift), drift)
    if settings.stop_rule not in rules:
        raise SftscopeError(f"analysis.stop_rule {settings.stop_rule!r} is unknown (known: {', '.join(rules)})")
    if rules[settings.stop_rule]["step"] is None:
        raise SftscopeError(f"analysis.stop_rule {settings.stop_rule} does not apply to this run "
                            f"({rules[settings.stop_rule]['not_applicable']}): choose another rule")
    rules["recommended"] = {**rules[settings.stop_rule], "same_as": settings.stop_rule}
    gap = (quality.set_index("step")["test_loss"] - losses.set_index("step")["train_loss"]).dropna()
    emerged_total = task_table[task_table["type"] == "emerged"].set_index("step")["count"]
    corr = correlation(emerged_total, gap)
    types = final_types(task_effects, boundary, tau=settings.tau, salience=settings.salience)
    emerged = early_late_quality(task_effects, types, tau=settings.tau, salience=settings.salience,
                                 baseline_step=settings.baseline_step)
    utility = utilities(task_effects, types)
    found = findings(task_table, flows, boundary, steps[-1], emerged, utility=utility, has_baseline=has_baseline,
                     rule=settings.stage_rule, short_stage=settings.short_stage)
    orders = order_table(task, **salience)
    removal = general_removal(per_sample)
    forgetting = None
    if drift is not None:
        forgetting = forgetting_summary(removal, drift)
    drift_out = None
    if drift is not None:
        write_table(folder.table("drift"), drift.reset_index())
        drift_out = {"per_checkpoint": [r for r in drift_rows if not r.get("missing")],
                     "missing": [r["step"] for r in drift_rows if r.get("missing")], "forgetting": forgetting}
    whole = whole_prompt_table(effects)
    for name, frame in (("dynamics", table), ("flows", flows), ("findings", found), ("per_sample", per_sample),
                        ("orders", orders), ("quality", quality), ("whole_prompt", whole)):
        write_table(folder.table(name), frame)
    summary = {
        "recommended_step": rules["recommended"]["step"],
        "recommended_rule": settings.stop_rule,
        "rules": rules,
        "quality": _records(quality),
        "drift": _compact(drift_out),
        "labels": labels,
        "eval_split": "validation (the rules see it; the test split only judges their picks)",
        "stage_boundary_step": boundary,
        "stage_boundary_by_rule": by_rule,
        "min_validation_loss_step": _argmin(losses, "validation_loss"),
        "min_test_loss_step": _argmin(quality, "test_loss"),
        "loss_gap": {int(k): float(v) for k, v in gap.items()},
        "corr_emerged_vs_loss_gap": corr,
        "utility_cross_entropy": utility,
        "early_late_emerged": emerged,
        "findings": found.to_dict("records"),
        "whole_prompt": _records(whole),
        "checkpoints": steps,
        "settings": asdict(settings),
        **(extra or {}),
    }
    write_json(folder.summary, summary)
    write_manifest(run_dir, units)
    return summary


def _argmin(frame: pd.DataFrame, column: str) -> int | None:
    if column not in frame or frame[column].isna().all():
        return None
    return int(frame.loc[frame[column].idxmin(), "step"])


def _compact(drift: dict | None) -> dict | None:
    """Drift for summary.json: every measure of every checkpoint, without the per-prompt arrays."""
    if drift is None:
        return None
    rows = [{k: v for k, v in r.items() if k != "per_prompt_kl"} for r in drift["per_checkpoint"]]
    return {**drift, "per_checkpoint": rows}


def _records(frame: pd.DataFrame) -> list[dict]:
    """Rows as JSON-ready dicts: NaN becomes null."""
    return json.loads(frame.to_json(orient="records"))
