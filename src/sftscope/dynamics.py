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

from .decompose import SALIENCE_TOLERANCE
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

    A reference maximum of 0 (a game with no interaction at all) makes nothing
    salient, as ``decompose.salience_threshold`` does.
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
    if mode != "absolute":
        # no interaction at all: nothing is encoded; exact decimal ties count (decompose.SALIENCE_TOLERANCE)
        threshold = threshold.where(threshold > 0, np.inf) * (1 - SALIENCE_TOLERANCE)
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


def sample_keys(effects: pd.DataFrame, model: str = "target") -> list[tuple[str, str]]:
    """Every (split, sample) of a model in the effects table, salient interactions or not."""
    frame = _with_defaults(effects)
    rows = frame.loc[frame["model"] == model, ["split", "sample"]].drop_duplicates()
    return sorted(map(tuple, rows.itertuples(index=False, name=None)))


def all_steps(effects: pd.DataFrame, model: str = "target") -> list[int]:
    frame = _with_defaults(effects)
    return sorted(int(s) for s in frame.loc[frame["model"] == model, "step"].unique())


def sample_omegas(effects: pd.DataFrame, encoded_rows: pd.DataFrame, model: str = "target",
                  steps: list[int] | None = None) -> dict[tuple, dict[int, dict[Key, float]]]:
    """``{(split, sample): {step: {(kind, mask): effect}}}`` for one model.

    Every sample of the effects table is there, and every step of ``steps``
    (default: the model's own steps): a sample or a checkpoint that encodes
    nothing has an empty set, never a missing entry.
    """
    steps = all_steps(effects, model) if steps is None else steps
    out = {key: {step: {} for step in steps} for key in sample_keys(effects, model)}
    rows = encoded_rows[encoded_rows["model"] == model] if "model" in encoded_rows else encoded_rows
    for (split, sample, step), group in rows.groupby(["split", "sample", "step"]):
        if int(step) in out.get((split, sample), {}):
            keys = zip(group["kind"], group["bitmask"].astype(int))
            out[(split, sample)][int(step)] = dict(zip(keys, group["effect"].astype(float)))
    return out


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
    omegas = sample_omegas(effects, enc)
    base_sets = baseline_sets(effects, enc, baseline_model, baseline_step)
    rows = []
    for (split, sample), per_step in omegas.items():
        for types in sample_types(per_step):
            for name in TYPES:
                inter = getattr(types, name)
                vals = list(inter.values())
                gen, gen_w = (  # a baseline that encodes nothing for this sample shares nothing: r_gen 0
                    generalizability(inter, base_sets.get((split, sample), {})) if base_sets is not None
                    else (np.nan, np.nan)
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


def baseline_sets(effects, enc, baseline_model, baseline_step) -> dict[tuple, dict[Key, float]] | None:
    """The baseline model's encoded sets at one step for every sample (``None`` without a baseline model).

    One step for all samples: ``baseline_step``, else the baseline's last
    checkpoint in the table; a sample that encodes nothing there has an empty set.
    """
    if baseline_model is None:
        return None
    steps = all_steps(effects, baseline_model)
    if not steps:
        raise SftscopeError(f"baseline model {baseline_model!r} has no rows in the effects table")
    step = steps[-1] if baseline_step is None else baseline_step
    if step not in steps:
        raise SftscopeError(f"the baseline model has no checkpoint {step} (it has {', '.join(map(str, steps))})")
    return {key: per_step[step] for key, per_step in sample_omegas(effects, enc, baseline_model, [step]).items()}


def summarize(per_sample: pd.DataFrame, *, by_split: bool = True) -> pd.DataFrame:
    """Average the per-sample table over samples: per split, step and type, or (``by_split=False``) over every
    sample at once, so that each sample weighs the same whichever split it is in."""
    numeric = ["count", "strength", "mean_order", "rho", "avg_contribution", "r_gen", "r_gen_weighted"]
    keys = ["split", "step", "type"] if by_split else ["step", "type"]
    return per_sample.groupby(keys, as_index=False)[numeric].mean()


def order_table(effects: pd.DataFrame, **options) -> pd.DataFrame:
    """Eq. 8 per (step, type, order): strengths and counts, positive and negative, averaged over samples.

    The paper averages the distributions over samples (Appendix E.4); the sums
    over samples are kept as ``*_total`` columns. Every sample counts, also
    one that encodes nothing of a type.
    """
    enc = encoded(effects, **options)
    omegas = sample_omegas(effects, enc)
    max_order = int(_with_defaults(effects)["order"].max())
    pooled: dict[tuple[int, str], dict] = {}
    for (split, sample), per_step in omegas.items():
        for types in sample_types(per_step):
            for name in TYPES:
                bucket = pooled.setdefault((types.step, name), {})
                bucket.update({(k, m, split, sample): v for (k, m), v in getattr(types, name).items()})
    samples = max(1, len(omegas))
    measures = ["strength_pos", "strength_neg", "count_pos", "count_neg"]
    frames = []
    for (step, name), inter in pooled.items():
        dist = order_distribution(inter, max_order).assign(step=step, type=name)
        for column in measures:
            dist[f"{column}_total"] = dist[column]
            dist[column] = dist[column] / samples
        frames.append(dist)
    return pd.concat(frames, ignore_index=True)[["step", "type", "order", *measures,
                                                 *(f"{c}_total" for c in measures)]]


def interval_flows(effects: pd.DataFrame, **options) -> pd.DataFrame:
    """Per interval (t_prev, t]: interactions newly emerged and newly removed, summed over samples.

    Two counts of emergence: ``emerged`` counts churn (an interaction that
    leaves and comes back counts again each time it reappears);
    ``emerged_distinct`` counts an interaction once, in the interval where it
    first emerges. Removal has no churn (a removed interaction is never
    preserved again). ``emerged_rho`` is the mean, over samples with any, of
    the uncancelled ratio of the interval's newly emerged (churn) interactions.
    """
    enc = encoded(effects, **options)
    steps = all_steps(effects)
    omegas = sample_omegas(effects, enc, steps=steps)
    columns = ("emerged", "emerged_distinct", "removed", "emerged_strength", "emerged_distinct_strength",
               "removed_strength")
    totals = {s: dict.fromkeys(columns, 0.0) for s in steps[1:]}
    rhos: dict[int, list[float]] = {s: [] for s in steps[1:]}
    strength = lambda d: float(np.sum(np.abs(list(d.values())))) if d else 0.0  # noqa: E731
    for per_step in omegas.values():
        seq = sample_types(per_step)
        ever: set = set()
        for prev, cur in zip(seq, seq[1:]):
            new_e = {k: v for k, v in cur.emerged.items() if k not in prev.emerged}
            first = {k: v for k, v in new_e.items() if k not in ever}
            ever.update(cur.emerged)
            new_r = {k: v for k, v in cur.removed.items() if k not in prev.removed}
            row = totals[cur.step]
            for name, found in (("emerged", new_e), ("emerged_distinct", first), ("removed", new_r)):
                row[name] += len(found)
                row[f"{name}_strength"] += strength(found)
            if new_e:
                rhos[cur.step].append(uncancelled_ratio(list(new_e.values())))
    frame = pd.DataFrame([
        {"step": s, "step_from": p, **{k: (int(v) if "strength" not in k else v) for k, v in totals[s].items()},
         "emerged_rho": float(np.mean(rhos[s])) if rhos[s] else float("nan")}
        for p, s in zip(steps, steps[1:])
    ])
    return frame


def probe_utility(effects: pd.DataFrame, *, split: str = "validation", **options) -> pd.Series:
    """Per step: mean over the split's samples of -log sigmoid(bias + sum of its salient interactions) (Eq. 11).

    A sample with no salient interaction at a step is scored on its bias alone.
    """
    frame = _with_defaults(effects)
    frame = frame[(frame["model"] == "target") & (frame["split"] == split)]
    if frame.empty:
        return pd.Series(dtype=float)
    bias = frame[frame["order"] == 0].groupby(["sample", "step"])["effect"].sum()
    salient = encoded(frame, **options).groupby(["sample", "step"])["effect"].sum()
    score = bias.add(salient, fill_value=0.0)
    loss = np.logaddexp(0.0, -score)
    return loss.groupby(level="step").mean().rename("probe_utility")
