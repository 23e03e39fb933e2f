"""The paper's five findings and the early/late emerged split: pure functions over the effects tables."""

from __future__ import annotations

import numpy as np
import pandas as pd

from .dynamics import (
    baseline_sets, complete_omegas, encoded, generalizability, omegas_by_sample, sample_types, type_utility,
    uncancelled_ratio,
)


def final_types(effects: pd.DataFrame, boundary: int, *, tau: float = 0.05, salience: str = "relative") -> dict:
    """Per (split, sample): the types at the last checkpoint, emerged split at the boundary.

    Early-emerged = emerged by the boundary and still emerged at the end; late = the rest.
    """
    target = effects[effects["model"] == "target"]
    steps = sorted(int(s) for s in target["step"].unique())
    omegas = omegas_by_sample(encoded(target, tau=tau, mode=salience))
    complete_omegas(omegas, steps)
    out = {}
    for key, per_step in omegas.items():
        seq = {t.step: t for t in sample_types(per_step)}
        final, at_boundary = seq[steps[-1]], seq[max(s for s in seq if s <= boundary)]
        out[key] = {
            "preserved": final.preserved,
            "removed": final.removed,
            "early_emerged": {k: v for k, v in final.emerged.items() if k in at_boundary.emerged},
            "late_emerged": {k: v for k, v in final.emerged.items() if k not in at_boundary.emerged},
        }
    return out


def utilities(effects: pd.DataFrame, types: dict) -> dict:
    """Eq. 11 on test samples: cross-entropy of the target from each type alone, at the last checkpoint.

    Removed interactions are scored with the pre-SFT bias (their effects are from t_0).
    """
    target = effects[effects["model"] == "target"]
    steps = sorted(target["step"].unique())
    bias = target[(target["order"] == 0) & (target["step"] == steps[-1])].groupby("sample")["effect"].sum()
    bias0 = target[(target["order"] == 0) & (target["step"] == steps[0])].groupby("sample")["effect"].sum()
    losses = {name: [] for name in ("preserved", "removed", "early_emerged", "late_emerged")}
    for (split, sample), sets in types.items():
        if split == "test":
            for name in losses:
                losses[name].append(type_utility((bias0 if name == "removed" else bias)[sample], sets[name]))
    return {k: float(np.mean(v)) if v else float("nan") for k, v in losses.items()}


def early_late_quality(effects: pd.DataFrame, types: dict, *, tau: float = 0.05, salience: str = "relative",
                       baseline_step: int | None = None) -> dict:
    """Mean r_gen (vs the baseline model at its checkpoint) and rho of early- and late-emerged sets."""
    has_baseline = (effects["model"] == "baseline").any()
    base = baseline_sets(effects, encoded(effects, tau=tau, mode=salience),
                         "baseline" if has_baseline else None, baseline_step)
    out = {}
    for name in ("early_emerged", "late_emerged"):
        sets = [(key, s[name]) for key, s in types.items() if s[name]]
        gens = [generalizability(inter, base.get(key, {}))[0] for key, inter in sets] if has_baseline else []
        out[name] = {
            "r_gen": float(np.mean(gens)) if gens else float("nan"),
            "rho": float(np.mean([uncancelled_ratio(list(inter.values())) for _, inter in sets])) if sets else float("nan"),
        }
    return out


def findings(summary_table: pd.DataFrame, flows: pd.DataFrame, boundary: int, last: int, emerged: dict) -> pd.DataFrame:
    """The paper's five findings, measured on this run (mean over all probe samples)."""
    def at(step, type_, column):
        rows = summary_table[(summary_table["step"] == step) & (summary_table["type"] == type_)]
        return float(rows[column].mean()) if len(rows) else float("nan")

    first = flows[flows["step"] <= boundary]
    second = flows[flows["step"] > boundary]
    em1, em2 = int(first["emerged"].sum()), int(second["emerged"].sum())
    rm1, rm2 = int(first["removed"].sum()), int(second["removed"].sum())
    early_gen, late_gen = emerged["early_emerged"]["r_gen"], emerged["late_emerged"]["r_gen"]
    early_rho, late_rho = emerged["early_emerged"]["rho"], emerged["late_emerged"]["rho"]
    rem = {c: at(last, "removed", c) for c in ("mean_order", "r_gen", "rho")}
    pre = {c: at(last, "preserved", c) for c in ("mean_order", "r_gen", "rho", "count")}
    emg = {c: at(last, "emerged", c) for c in ("mean_order", "r_gen", "rho", "count")}
    rows = [
        ("1 few emerge in stage 1, many in stage 2", f"emerged: stage 1 {em1}, stage 2 {em2}", em1 < em2),
        ("2 early-emerged more generalizable, less cancelling",
         f"r_gen early {early_gen:.2f} vs late {late_gen:.2f}; rho early {early_rho:.2f} vs late {late_rho:.2f}",
         bool(early_gen > late_gen and early_rho > late_rho)),
        ("3 removals happen mostly in stage 1", f"removed: stage 1 {rm1}, stage 2 {rm2}", rm1 > rm2),
        ("4 removed are high-order, non-generalizable, cancelling",
         f"order {rem['mean_order']:.2f} (preserved {pre['mean_order']:.2f}); r_gen {rem['r_gen']:.2f}; rho {rem['rho']:.2f}",
         bool(rem["mean_order"] > pre["mean_order"] and rem["r_gen"] < pre["r_gen"] and rem["rho"] < pre["rho"])),
        ("5 preserved are few, low-order, generalizable, weakly cancelling",
         f"count {pre['count']:.1f} vs emerged {emg['count']:.1f}; order {pre['mean_order']:.2f} vs {emg['mean_order']:.2f}; "
         f"r_gen {pre['r_gen']:.2f} vs {emg['r_gen']:.2f}; rho {pre['rho']:.2f} vs {emg['rho']:.2f}",
         bool(pre["count"] < emg["count"] and pre["mean_order"] < emg["mean_order"]
              and pre["r_gen"] > emg["r_gen"] and pre["rho"] > emg["rho"])),
    ]
    return pd.DataFrame(rows, columns=["finding", "measured", "holds"])
