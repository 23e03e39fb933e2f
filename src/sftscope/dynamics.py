"""Interaction dynamics along SFT (METHOD.md sections 4-7): pure pandas/numpy, no models.

Input is an effects table, one row per effect, with at least the columns
``sample, step, kind, bitmask, order, effect`` (and ``model``, ``split``
where several are mixed). Order-0 rows (the bias) are kept for the utility
metric but are never interactions.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import pandas as pd

from .errors import SftscopeError

Key = tuple[str, int]  # (kind, bitmask)
TYPES = ("preserved", "removed", "emerged")


# --------------------------------------------------------------------------- salience


def encoded(
    effects: pd.DataFrame,
    *,
    tau: float = 0.05,
    mode: Literal["relative", "initial", "absolute"] = "relative",
    absolute: float | None = None,
) -> pd.DataFrame:
    """Rows of the encoded (salient) interactions, Omega, per (model, sample, step).

    - ``relative``: |I| >= tau * max|I| of the same sample and checkpoint (default);
    - ``initial``: relative to the sample's maximum at the first checkpoint;
    - ``absolute``: |I| >= ``absolute``.
    """
    frame = _with_defaults(effects)
    inter = frame[frame["order"] > 0].copy()
    inter["abs"] = inter["effect"].abs()
    groups = ["model", "sample", "step"]
    if mode == "absolute":
        if absolute is None:
            raise SftscopeError("mode='absolute' needs an absolute threshold")
        threshold = pd.Series(absolute, index=inter.index)
    elif mode == "relative":
        threshold = tau * inter.groupby(groups)["abs"].transform("max")
    elif mode == "initial":
        first = inter.groupby(["model", "sample"])["step"].transform("min")
        initial_max = inter[inter["step"] == first].groupby(["model", "sample"])["abs"].max()
        threshold = tau * inter.set_index(["model", "sample"]).index.map(initial_max).to_numpy()
        threshold = pd.Series(threshold, index=inter.index)
    else:
        raise SftscopeError(f"unknown salience mode {mode!r}: use relative, initial or absolute")
    kept = inter[(inter["abs"] >= threshold) & (inter["abs"] > 0)]
    return kept.drop(columns="abs")


def _with_defaults(effects: pd.DataFrame) -> pd.DataFrame:
    missing = {"sample", "step", "kind", "bitmask", "order", "effect"} - set(effects.columns)
    if missing:
        raise SftscopeError(f"effects table lacks columns: {', '.join(sorted(missing))}")
    frame = effects
    if "model" not in frame:
        frame = frame.assign(model="target")
    if "split" not in frame:
        frame = frame.assign(split="train")
    return frame


# --------------------------------------------------------------------------- types


@dataclass
class SampleTypes:
    """The three types of one sample at one checkpoint, with the effects METHOD.md uses."""

    step: int
    preserved: dict[Key, float] = field(default_factory=dict)  # effect at t
    removed: dict[Key, float] = field(default_factory=dict)  # effect at t_0
    emerged: dict[Key, float] = field(default_factory=dict)  # effect at t


def sample_types(omegas: dict[int, dict[Key, float]]) -> list[SampleTypes]:
    """P_t, R_t, E_t at every checkpoint from ``{step: {key: effect}}`` (first step = t_0)."""
    steps = sorted(omegas)
    if not steps:
        return []
    omega0 = omegas[steps[0]]
    alive = set(omega0)
    out = []
    for step in steps:
        current = omegas[step]
        alive &= set(current)
        out.append(
            SampleTypes(
                step,
                preserved={k: current[k] for k in alive},
                removed={k: omega0[k] for k in omega0 if k not in alive},
                emerged={k: current[k] for k in current if k not in alive},
            )
        )
    return out


def omegas_by_sample(encoded_rows: pd.DataFrame, model: str = "target") -> dict[tuple, dict[int, dict[Key, float]]]:
    """``{(split, sample): {step: {(kind, mask): effect}}}`` for one model."""
    rows = encoded_rows[encoded_rows["model"] == model]
    out: dict[tuple, dict[int, dict[Key, float]]] = {}
    for (split, sample, step), group in rows.groupby(["split", "sample", "step"]):
        keys = zip(group["kind"], group["bitmask"].astype(int))
        out.setdefault((split, sample), {})[int(step)] = dict(zip(keys, group["effect"].astype(float)))
    return out


def all_steps(effects: pd.DataFrame, model: str = "target") -> list[int]:
    frame = _with_defaults(effects)
    return sorted(int(s) for s in frame.loc[frame["model"] == model, "step"].unique())


def complete_omegas(omegas: dict[tuple, dict[int, dict[Key, float]]], steps: list[int]) -> None:
    """A checkpoint where a sample encodes nothing still counts: fill it with an empty set."""
    for per_step in omegas.values():
        for step in steps:
            per_step.setdefault(step, {})


# --------------------------------------------------------------------------- metrics


def uncancelled_ratio(effects: list[float]) -> float:
    """rho = |sum I| / sum |I| (NaN for an empty set): near 0 means mutual cancellation."""
    total = float(np.sum(np.abs(effects)))
    return float(abs(np.sum(effects)) / total) if total > 0 else float("nan")


def order_distribution(interactions: dict[Key, float], max_order: int) -> pd.DataFrame:
    """Eq. 8: per order k, positive strength D+, negative strength D-, and counts.

    Keys are ``(kind, mask, ...)``: extra key parts (e.g. the sample) allow pooling.
    """
    rows = []
    for k in range(1, max_order + 1):
        vals = [v for key, v in interactions.items() if int(key[1]).bit_count() == k]
        pos = [v for v in vals if v > 0]
        neg = [-v for v in vals if v < 0]
        rows.append({"order": k, "strength_pos": float(sum(pos)), "strength_neg": float(sum(neg)),
                     "count_pos": len(pos), "count_neg": len(neg)})
    return pd.DataFrame(rows)


def generalizability(
    interactions: dict[Key, float], baseline: dict[Key, float]
) -> tuple[float, float]:
    """Eq. 7/9: share of interactions also encoded by the baseline model with the same sign.

    Returns (count-based r_gen, strength-weighted r_gen); NaN for an empty set.
    """
    if not interactions:
        return float("nan"), float("nan")
    gamma = {k: 1.0 if k in baseline and np.sign(baseline[k]) == np.sign(v) else 0.0 for k, v in interactions.items()}
    weights = {k: abs(v) for k, v in interactions.items()}
    total = sum(weights.values())
    weighted = sum(gamma[k] * weights[k] for k in gamma) / total if total > 0 else float("nan")
    return float(np.mean(list(gamma.values()))), float(weighted)


def type_utility(bias: float, interactions: dict[Key, float]) -> float:
    """Eq. 11: cross-entropy -log sigmoid(b0 + sum I) of predicting the target from one type alone."""
    score = bias + float(sum(interactions.values()))
    return float(np.logaddexp(0.0, -score))  # -log sigmoid(score), stable


# --------------------------------------------------------------------------- per-checkpoint table


def dynamics_table(
    effects: pd.DataFrame,
    *,
    tau: float = 0.05,
    mode: Literal["relative", "initial", "absolute"] = "relative",
    absolute: float | None = None,
    baseline_model: str | None = None,
    baseline_step: int | None = None,
) -> pd.DataFrame:
    """One row per (checkpoint, type): counts, strengths, order, rho, r_gen, averaged over samples.

    ``baseline_model`` names the rows of the other architecture's model in
    ``effects``; its interactions at ``baseline_step`` (default: its last) are
    the reference for generalizability.
    """
    enc = encoded(effects, tau=tau, mode=mode, absolute=absolute)
    steps = all_steps(effects)
    omegas = omegas_by_sample(enc)
    complete_omegas(omegas, steps)
    base_sets = baseline_sets(effects, enc, baseline_model, baseline_step)
    rows = []
    for (split, sample), per_step in omegas.items():
        for types in sample_types(per_step):
            for name in TYPES:
                inter = getattr(types, name)
                vals = list(inter.values())
                gen, gen_w = (
                    generalizability(inter, base_sets.get((split, sample), {})) if base_sets else (np.nan, np.nan)
                )
                rows.append({
                    "split": split, "sample": sample, "step": types.step, "type": name,
                    "count": len(vals), "strength": float(np.sum(np.abs(vals))) if vals else 0.0,
                    "mean_order": float(np.mean([int(m).bit_count() for _, m in inter])) if inter else np.nan,
                    "rho": uncancelled_ratio(vals), "avg_contribution": float(np.mean(np.abs(vals))) if vals else np.nan,
                    "r_gen": gen, "r_gen_weighted": gen_w,
                })
    per_sample = pd.DataFrame(rows)
    if per_sample.empty:
        raise SftscopeError("no encoded interactions at all: check the effects table and the threshold")
    return per_sample


def baseline_sets(effects, enc, baseline_model, baseline_step) -> dict[tuple, dict[Key, float]]:
    if baseline_model is None:
        return {}
    base = omegas_by_sample(enc, baseline_model)
    if not base and baseline_model not in set(_with_defaults(effects)["model"]):
        raise SftscopeError(f"baseline model {baseline_model!r} has no rows in the effects table")
    out = {}
    for key, per_step in base.items():
        step = max(per_step) if baseline_step is None else baseline_step
        if step not in per_step:
            raise SftscopeError(f"baseline model has no checkpoint {step} for sample {key}")
        out[key] = per_step[step]
    return out


def summarize(per_sample: pd.DataFrame) -> pd.DataFrame:
    """Average the per-sample table over samples (per split, step and type)."""
    numeric = ["count", "strength", "mean_order", "rho", "avg_contribution", "r_gen", "r_gen_weighted"]
    return per_sample.groupby(["split", "step", "type"], as_index=False)[numeric].mean()


def order_table(effects: pd.DataFrame, **options) -> pd.DataFrame:
    """Eq. 8 pooled over samples: per (step, type, order) strengths and counts, positive and negative."""
    enc = encoded(effects, **options)
    steps = all_steps(effects)
    omegas = omegas_by_sample(enc)
    complete_omegas(omegas, steps)
    max_order = int(_with_defaults(effects)["order"].max())
    pooled: dict[tuple[int, str], dict] = {}
    for (split, sample), per_step in omegas.items():
        for types in sample_types(per_step):
            for name in TYPES:
                bucket = pooled.setdefault((types.step, name), {})
                bucket.update({(k, m, split, sample): v for (k, m), v in getattr(types, name).items()})
    frames = [order_distribution(inter, max_order).assign(step=step, type=name) for (step, name), inter in pooled.items()]
    return pd.concat(frames, ignore_index=True)[["step", "type", "order", "strength_pos", "strength_neg",
                                                 "count_pos", "count_neg"]]


def interval_flows(effects: pd.DataFrame, **options) -> pd.DataFrame:
    """Per interval (t_prev, t]: count and strength newly emerged and newly removed, summed over samples."""
    enc = encoded(effects, **options)
    steps = all_steps(effects)
    omegas = omegas_by_sample(enc)
    complete_omegas(omegas, steps)
    totals = {s: {"emerged": 0, "removed": 0, "emerged_strength": 0.0, "removed_strength": 0.0} for s in steps[1:]}
    for per_step in omegas.values():
        seq = sample_types(per_step)
        for prev, cur in zip(seq, seq[1:]):
            new_e = {k: v for k, v in cur.emerged.items() if k not in prev.emerged}
            new_r = {k: v for k, v in cur.removed.items() if k not in prev.removed}
            row = totals[cur.step]
            row["emerged"] += len(new_e)
            row["removed"] += len(new_r)
            row["emerged_strength"] += float(np.sum(np.abs(list(new_e.values())))) if new_e else 0.0
            row["removed_strength"] += float(np.sum(np.abs(list(new_r.values())))) if new_r else 0.0
    frame = pd.DataFrame([{"step": s, "step_from": p, **totals[s]} for p, s in zip(steps, steps[1:])])
    return frame
