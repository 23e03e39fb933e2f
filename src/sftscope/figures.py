"""Figures in the spirit of the paper's, and the learning-forgetting curve: PNG files for the report.

Pure plotting of what ``analyze`` stored; every figure is written atomically.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from .decompose import reconstruct
from .store import atomic_write

COLORS = {"preserved": "#1b7837", "removed": "#b2182b", "emerged": "#2166ac",
          "early_emerged": "#67a9cf", "late_emerged": "#053061"}


def _plt():
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    return plt


def _shade(ax, boundary: int, last: int) -> None:
    ax.axvspan(0, boundary, color="#a6dba0", alpha=0.35, label="denoising stage")
    ax.axvspan(boundary, last, color="#c2a5cf", alpha=0.25, label="overfitting stage")


def _save(fig, path: Path) -> Path:
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight"))
    _plt().close(fig)
    return path


def figure_types(dynamics: pd.DataFrame, boundary: int, path: Path) -> Path:
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.6))
    last = int(dynamics["step"].max())
    for ax, column, title in zip(axes, ("count", "strength"), ("number of interactions", "total strength |I|")):
        _shade(ax, boundary, last)
        for name in ("preserved", "removed", "emerged"):
            rows = dynamics[dynamics["type"] == name].groupby("step")[column].mean()
            ax.plot(rows.index, rows.values, marker="o", ms=3, color=COLORS[name], label=name)
        ax.set_xscale("symlog", linthresh=1)
        ax.set_xlabel("SFT step")
        ax.set_title(f"{title} (mean per sample)")
    axes[0].legend(fontsize=8)
    return _save(fig, path)


def figure_orders(orders: pd.DataFrame, step: int, path: Path) -> Path:
    """Order distributions of each type at ``step``, pooled over samples (analysis/orders.csv)."""
    plt = _plt()
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.4), sharey=True)
    for ax, name in zip(axes, ("preserved", "removed", "emerged")):
        dist = orders[(orders["step"] == step) & (orders["type"] == name)]
        ax.bar(dist["order"], dist["strength_pos"], color=COLORS[name])
        ax.bar(dist["order"], -dist["strength_neg"], color=COLORS[name], alpha=0.5)
        ax.axhline(0, color="black", lw=0.6)
        ax.set_title(f"{name} at step {step}: strength by order")
        ax.set_xlabel("order (number of words)")
    axes[0].set_ylabel("positive up, negative down")
    return _save(fig, path)


def figure_quality(dynamics: pd.DataFrame, boundary: int, path: Path) -> Path:
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.4))
    last = int(dynamics["step"].max())
    for ax, column, title in zip(axes, ("r_gen", "rho"), ("generalizability r_gen", "uncancelled ratio rho")):
        _shade(ax, boundary, last)
        for name in ("preserved", "removed", "emerged"):
            rows = dynamics[dynamics["type"] == name].groupby("step")[column].mean()
            ax.plot(rows.index, rows.values, marker="o", ms=3, color=COLORS[name], label=name)
        ax.set_xscale("symlog", linthresh=1)
        ax.set_ylim(-0.02, 1.02)
        ax.set_xlabel("SFT step")
        ax.set_title(title)
    axes[0].legend(fontsize=8)
    return _save(fig, path)


def figure_utility(utility: dict[str, float], path: Path) -> Path:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.5, 3.2))
    names = list(utility)
    ax.bar(names, [utility[n] for n in names], color=[COLORS.get(n, "gray") for n in names])
    ax.set_ylabel("cross-entropy on validation probes")
    ax.set_title("predicting the target from one type alone")
    ax.tick_params(axis="x", labelsize=8)
    return _save(fig, path)


def figure_losses(losses: pd.DataFrame, quality: pd.DataFrame, recommended: int, boundary: int, path: Path) -> Path:
    """Train, validation and test loss, and test accuracy (closed label sets), with the recommended step and the boundary."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7.5, 3.6))
    ax.plot(losses["step"], losses["train_loss"], marker="o", ms=3, label="train loss")
    if "validation_loss" in losses:
        ax.plot(losses["step"], losses["validation_loss"], marker="o", ms=3, label="validation loss (the rules')")
    ax.plot(quality["step"], quality["test_loss"], marker="o", ms=3, label="test loss")
    ax.axvline(recommended, color="#1b7837", ls="--", label=f"recommended (step {recommended})")
    ax.axvline(boundary, color="#762a83", ls=":", label=f"end of denoising (step {boundary})")
    ax.set_xscale("symlog", linthresh=1)
    ax.set_xlim(left=0)
    ax.set_xlabel("SFT step")
    ax.set_ylabel("loss on the response tokens")
    handles, labels = ax.get_legend_handles_labels()
    accuracy = quality.dropna(subset=["accuracy"]) if "accuracy" in quality else quality.iloc[:0]
    if len(accuracy):
        right = ax.twinx()
        line = right.plot(accuracy["step"], accuracy["accuracy"], marker="s", ms=3, color="black", label="test accuracy")
        right.set_ylim(0, 1.02)
        right.set_ylabel("test accuracy")
        handles, labels = handles + line, labels + ["test accuracy"]
    ax.legend(handles, labels, fontsize=8, loc="center right")
    ax.set_title("task quality at every checkpoint")
    return _save(fig, path)


def figure_fidelity(unit: pd.DataFrame, path: Path) -> Path:
    """Model output v(S) against the AND-OR model over all masks, and the sorted effect strengths."""
    plt = _plt()
    ands = unit[unit["kind"] == "AND"].sort_values("bitmask")
    ors = unit[unit["kind"] == "OR"].sort_values("bitmask")
    fitted = reconstruct(ands["effect"].to_numpy(), ors["effect"].to_numpy())  # = v + q: q is the bounded noise
    values = ands["value"].to_numpy()
    order = np.argsort(values)
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.4))
    axes[0].plot(values[order], label="model output v(S)", lw=2)
    axes[0].plot(fitted[order], ls="--", label="AND-OR model (bias + interactions)")
    axes[0].set_xlabel("masked inputs S, sorted by v(S)")
    axes[0].set_title("fidelity: all 2^n masked inputs")
    axes[0].legend(fontsize=8)
    strengths = np.sort(np.abs(unit.loc[unit["order"] > 0, "effect"].to_numpy()))[::-1]
    axes[1].plot(strengths)
    axes[1].set_yscale("log")
    axes[1].set_xlabel("interactions, by strength")
    axes[1].set_title("sparsity: sorted |I|")
    return _save(fig, path)


FORGETTING_PANELS = (("kl", "KL from the base model (nats per token)"),
                     ("knowledge_change", "knowledge accuracy change (vs base)"),
                     ("label_share", "general prompts answered with a task label"))


def figure_forgetting(quality: pd.DataFrame, drift: pd.DataFrame, picks: dict[str, int], path: Path) -> Path:
    """The learning-forgetting curve: test accuracy against each drift measure, checkpoint by checkpoint, with the
    checkpoint every rule keeps marked."""
    plt = _plt()
    panels = [(c, t) for c, t in FORGETTING_PANELS if c in drift and drift[c].notna().any()]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.8), squeeze=False)
    accuracy = quality.set_index("step")["accuracy"]
    y_name = "test accuracy"
    if accuracy.isna().all():
        accuracy, y_name = quality.set_index("step")["test_loss"], "test loss"
    by_step: dict[int, list[str]] = {}
    for rule, step in picks.items():
        by_step.setdefault(step, []).append(rule)
    for ax, (column, title) in zip(axes[0], panels):
        steps = [s for s in drift.index if s in accuracy.index]
        x, y = drift.loc[steps, column].to_numpy(), accuracy[steps].to_numpy()
        ax.plot(x, y, color="#888", lw=1, zorder=1)
        ax.scatter(x, y, c=np.arange(len(steps)), cmap="viridis", s=28, zorder=2)
        for step, xi, yi in zip(steps, x, y):
            ax.annotate(str(step), (xi, yi), textcoords="offset points", xytext=(4, -9), fontsize=7, color="#555")
            if step in by_step:
                ax.scatter([xi], [yi], s=140, facecolors="none", edgecolors="#b2182b", lw=1.4, zorder=3)
                ax.annotate(", ".join(sorted(by_step[step]))[:60], (xi, yi), textcoords="offset points",
                            xytext=(6, 6), fontsize=6.5, color="#b2182b")
        ax.set_xlabel(title)
        ax.set_ylabel(y_name)
    fig.suptitle("what each checkpoint gains on the task (up) and costs outside it (right); circled: the rules' picks",
                 fontsize=9)
    return _save(fig, path)
