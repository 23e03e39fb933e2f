"""The paper's five findings, as statements that can fail: pure functions over the effects and dynamics tables.

Each finding is tested through named parts (see ``docs/findings.md``). A part
compares two measured numbers; it is *not measurable* when a number cannot be
had (no baseline model, an empty set, no second stage). A finding holds when
every part holds, does not hold when a measurable part fails, and is not
measurable otherwise (the reason says which parts are missing and why).

Stage splits never test what the boundary rule guarantees: with the
``cumulative`` rule stage 1 holds at least ``stage_fraction`` of the removals
by construction, so finding 3 tests the stage's *length* and the removal
*rate* per step on each side, not the removal counts.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from .dynamics import (
    baseline_sets, encoded, generalizability, sample_omegas, sample_types, type_utility, uncancelled_ratio,
)

HOLDS, FAILS, UNMEASURABLE = "holds", "does not hold", "not measurable"
HELD_OUT = "validation"  # the probes the weights never saw


def final_types(effects: pd.DataFrame, boundary: int, *, tau: float = 0.05, salience: str = "relative") -> dict:
    """Per (split, sample), every sample included: the types at the last checkpoint, emerged split at the boundary.

    Early-emerged = emerged by the boundary and still emerged at the end; late = the rest.
    """
    target = effects[effects["model"] == "target"]
    omegas = sample_omegas(target, encoded(target, tau=tau, mode=salience))
    out = {}
    for key, per_step in omegas.items():
        seq = {t.step: t for t in sample_types(per_step)}
        final, at_boundary = seq[max(seq)], seq[max(s for s in seq if s <= boundary)]
        out[key] = {
            "preserved": final.preserved,
            "removed": final.removed,
            "early_emerged": {k: v for k, v in final.emerged.items() if k in at_boundary.emerged},
            "late_emerged": {k: v for k, v in final.emerged.items() if k not in at_boundary.emerged},
        }
    return out


def utilities(effects: pd.DataFrame, types: dict) -> dict:
    """Eq. 11 on held-out (validation) samples: cross-entropy of the target from each type alone, at the last checkpoint.

    Removed interactions are scored with the pre-SFT bias (their effects are
    from t_0); a sample with an empty set is scored on its bias alone.
    """
    target = effects[effects["model"] == "target"]
    steps = sorted(target["step"].unique())
    bias = target[(target["order"] == 0) & (target["step"] == steps[-1])].groupby("sample")["effect"].sum()
    bias0 = target[(target["order"] == 0) & (target["step"] == steps[0])].groupby("sample")["effect"].sum()
    losses = {name: [] for name in ("preserved", "removed", "early_emerged", "late_emerged")}
    for (split, sample), sets in types.items():
        if split == HELD_OUT:
            for name in losses:
                losses[name].append(type_utility((bias0 if name == "removed" else bias)[sample], sets[name]))
    return {k: float(np.mean(v)) if v else float("nan") for k, v in losses.items()}


def early_late_quality(effects: pd.DataFrame, types: dict, *, tau: float = 0.05, salience: str = "relative",
                       baseline_step: int | None = None) -> dict:
    """Mean r_gen (vs the baseline model at its checkpoint; NaN without one) and rho of early- and late-emerged sets.

    Means over the samples whose set is not empty.
    """
    has_baseline = (effects["model"] == "baseline").any()
    base = baseline_sets(effects, encoded(effects, tau=tau, mode=salience),
                         "baseline" if has_baseline else None, baseline_step)
    out = {}
    for name in ("early_emerged", "late_emerged"):
        sets = [(key, s[name]) for key, s in types.items() if s[name]]
        gens = [generalizability(inter, base.get(key, {}))[0] for key, inter in sets] if base is not None else []
        out[name] = {
            "r_gen": float(np.mean(gens)) if gens else float("nan"),
            "rho": float(np.mean([uncancelled_ratio(list(inter.values())) for _, inter in sets])) if sets else float("nan"),
        }
    return out


# --------------------------------------------------------------------------- the five findings


@dataclass(frozen=True)
class Part:
    """One comparison inside a finding: ``left relation right`` (``relation`` is ``<``, ``>`` or ``<=``)."""

    name: str
    left: float
    relation: str
    right: float
    missing: str | None = None  # why it cannot be measured, when it cannot

    @property
    def outcome(self) -> str:
        if self.missing or _nan(self.left) or _nan(self.right):
            return UNMEASURABLE
        holds = {"<": self.left < self.right, ">": self.left > self.right, "<=": self.left <= self.right}[self.relation]
        return HOLDS if holds else FAILS

    @property
    def reason(self) -> str:
        return self.missing or f"{self.name}: a value is undefined (an empty set)"

    def record(self) -> dict:
        return {"part": self.name, "left": None if _nan(self.left) else float(self.left), "relation": self.relation,
                "right": None if _nan(self.right) else float(self.right), "outcome": self.outcome,
                "missing": self.reason if self.outcome == UNMEASURABLE else None}


def _nan(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def verdict(parts: list[Part]) -> tuple[str, str]:
    """A failing measurable part decides; otherwise all must be measurable to hold."""
    outcomes = [p.outcome for p in parts]
    if FAILS in outcomes:
        return FAILS, "; ".join(f"{p.name} fails" for p in parts if p.outcome == FAILS)
    if UNMEASURABLE in outcomes:
        missing = sorted({p.reason for p in parts if p.outcome == UNMEASURABLE})
        held = [p.name for p in parts if p.outcome == HOLDS]
        return UNMEASURABLE, "; ".join(missing) + (f" (measured and holding: {', '.join(held)})" if held else "")
    return HOLDS, ""


def stages(flows: pd.DataFrame, boundary: int) -> dict:
    """Removals and distinct emergences on each side of the boundary, with the stages' lengths in steps."""
    first, second = flows[flows["step"] <= boundary], flows[flows["step"] > boundary]
    start, last = int(flows["step_from"].min()), int(flows["step"].max())
    return {
        "em1": int(first["emerged_distinct"].sum()), "em2": int(second["emerged_distinct"].sum()),
        "ems1": float(first["emerged_distinct_strength"].sum()), "ems2": float(second["emerged_distinct_strength"].sum()),
        "rm1": int(first["removed"].sum()), "rm2": int(second["removed"].sum()),
        "len1": boundary - start, "len2": last - boundary, "total": last - start,
    }


def findings(summary_table: pd.DataFrame, flows: pd.DataFrame, boundary: int, last: int, emerged: dict, *,
             utility: dict | None = None, has_baseline: bool = True, rule: str = "cumulative",
             short_stage: float = 0.25) -> pd.DataFrame:
    """The paper's five findings on this run: verdict, reason and parts of each.

    ``summary_table``: per (step, type) means over every task sample (``dynamics.summarize(by_split=False)``:
    numbers are means over the probe samples, not means of split means);
    ``flows``: ``dynamics.interval_flows``; ``boundary``: the stage boundary by
    ``rule``; ``emerged``: ``early_late_quality``; ``utility``: ``utilities``.
    """
    def at(type_, column):
        rows = summary_table[(summary_table["step"] == last) & (summary_table["type"] == type_)]
        return float(rows[column].mean()) if len(rows) else float("nan")

    no_baseline = None if has_baseline else "no baseline model: r_gen unavailable"
    split = stages(flows, boundary)
    no_stage = None
    if split["rm1"] + split["rm2"] == 0:
        no_stage = "no interaction was removed: there is no denoising stage"
    elif split["len2"] <= 0:
        no_stage = f"the denoising stage ({rule}) does not end before the last checkpoint"
    # a first stage that covers all of training is measured, and it is not short: finding 3 fails there
    no_short_stage = "no interaction was removed: there is no denoising stage" if split["rm1"] + split["rm2"] == 0 else None
    rate1 = split["rm1"] / split["len1"] if split["len1"] > 0 else float("nan")
    rate2 = split["rm2"] / split["len2"] if split["len2"] > 0 else float("nan")
    share = split["len1"] / split["total"] if split["total"] > 0 else float("nan")
    early, late = emerged["early_emerged"], emerged["late_emerged"]
    rem = {c: at("removed", c) for c in ("mean_order", "r_gen", "rho")}
    pre = {c: at("preserved", c) for c in ("mean_order", "r_gen", "rho", "count")}
    emg = {c: at("emerged", c) for c in ("mean_order", "r_gen", "rho", "count")}
    utility = utility or {}
    u = {k: utility.get(k, float("nan")) for k in ("preserved", "removed", "late_emerged")}
    table = [
        ("1 few emerge in stage 1, many in stage 2",
         f"distinct interactions emerged: stage 1 {split['em1']}, stage 2 {split['em2']} "
         f"(strength {split['ems1']:.1f} vs {split['ems2']:.1f}); boundary step {boundary} ({rule})",
         [Part("count stage 1 < stage 2", split["em1"], "<", split["em2"], no_stage),
          Part("strength stage 1 < stage 2", split["ems1"], "<", split["ems2"], no_stage)]),
        ("2 early-emerged more generalizable, less cancelling",
         f"r_gen early {early['r_gen']:.2f} vs late {late['r_gen']:.2f}; rho early {early['rho']:.2f} vs late "
         f"{late['rho']:.2f}",
         [Part("r_gen early > late", early["r_gen"], ">", late["r_gen"], no_baseline),
          Part("rho early > late", early["rho"], ">", late["rho"])]),
        ("3 removals happen in a short first stage",
         f"stage 1 is {split['len1']} of {split['total']} steps ({share:.0%}); removed per step: stage 1 "
         f"{rate1:.2f}, stage 2 {rate2:.2f} ({split['rm1']} and {split['rm2']} removals)",
         [Part(f"stage 1 at most {short_stage:.0%} of training", share, "<=", short_stage, no_short_stage),
          Part("removal rate stage 1 > stage 2", rate1, ">", rate2, no_stage)]),
        ("4 removed are high-order, non-generalizable, cancelling",
         f"order {rem['mean_order']:.2f} (preserved {pre['mean_order']:.2f}); r_gen {rem['r_gen']:.2f} "
         f"(preserved {pre['r_gen']:.2f}); rho {rem['rho']:.2f} (preserved {pre['rho']:.2f})",
         [Part("order removed > preserved", rem["mean_order"], ">", pre["mean_order"]),
          Part("r_gen removed < preserved", rem["r_gen"], "<", pre["r_gen"], no_baseline),
          Part("rho removed < preserved", rem["rho"], "<", pre["rho"])]),
        ("5 preserved are few, low-order, generalizable, weakly cancelling, and carry the prediction",
         f"count {pre['count']:.1f} vs emerged {emg['count']:.1f}; order {pre['mean_order']:.2f} vs "
         f"{emg['mean_order']:.2f}; r_gen {pre['r_gen']:.2f} vs {emg['r_gen']:.2f}; rho {pre['rho']:.2f} vs "
         f"{emg['rho']:.2f}; cross-entropy from preserved {u['preserved']:.2f} vs removed {u['removed']:.2f} "
         f"and late-emerged {u['late_emerged']:.2f}",
         [Part("count preserved < emerged", pre["count"], "<", emg["count"]),
          Part("order preserved < emerged", pre["mean_order"], "<", emg["mean_order"]),
          Part("r_gen preserved > emerged", pre["r_gen"], ">", emg["r_gen"], no_baseline),
          Part("rho preserved > emerged", pre["rho"], ">", emg["rho"]),
          Part("cross-entropy preserved < removed", u["preserved"], "<", u["removed"]),
          Part("cross-entropy preserved < late-emerged", u["preserved"], "<", u["late_emerged"])]),
    ]
    rows = []
    for finding, measured, parts in table:
        outcome, reason = verdict(parts)
        rows.append({"finding": finding, "measured": measured, "verdict": outcome, "holds": outcome == HOLDS,
                     "reason": reason, "parts": json.dumps([p.record() for p in parts])})
    return pd.DataFrame(rows)
