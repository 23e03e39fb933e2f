"""Figures in the spirit of the paper's, and a self-contained HTML report.

Reads what ``analyze`` stored in a run folder; computes nothing new beyond
re-shaping it for the eye. Every figure is a PNG in ``<run>/report/`` and is
embedded (base64) in ``<run>/report/index.html``: the page makes no request.
"""

from __future__ import annotations

import base64
import html
import os
from pathlib import Path

import numpy as np
import pandas as pd

from .decompose import reconstruct
from .dynamics import encoded
from .errors import SftscopeError
from .probes import load_probes
from .stopping import benchmark_record
from .store import RunFolder, atomic_write, load_effects, read_json, read_losses, write_text

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
    ax.set_ylabel("cross-entropy on test samples")
    ax.set_title("predicting the target from one type alone")
    ax.tick_params(axis="x", labelsize=8)
    return _save(fig, path)


def figure_losses(losses: pd.DataFrame, quality: pd.DataFrame, recommended: int, boundary: int, path: Path) -> Path:
    """Train and test loss, and test accuracy (closed label sets), with the recommended step and the boundary."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7.5, 3.6))
    ax.plot(losses["step"], losses["train_loss"], marker="o", ms=3, label="train loss")
    ax.plot(losses["step"], losses["test_loss"], marker="o", ms=3, label="test loss")
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


CLEARLY_BETTER = 0.02  # accuracy: a checkpoint this much better than the recommended one is called out


def _number(value) -> str:
    return "undefined" if value is None else f"{value:.2f}"


def _pct(value) -> str:
    return "n/a" if value is None else f"{100 * value:.0f}%"


def benchmark_sentence(rule: str, record: dict | None) -> str | None:
    """What the stopping benchmark measured for ``rule``, eval-loss early stopping and the interaction rules."""
    if not record or rule not in record["heldout_mean_regret"]:
        return None
    regrets, kinds, earlier = record["heldout_mean_regret"], record["kinds"], record.get("heldout_kept_earlier", {})
    sentence = (f"In sftscope's stopping benchmark ({record['n_runs']} SFT runs on {len(record['datasets'])} data sets, "
                f"judged on test splits no rule saw; BENCHMARKS.md), {rule} kept checkpoints on average "
                f"{regrets[rule]:.1f} accuracy points below the best one of each held-out run")
    reference = "eval_loss_patience_2"
    if rule != reference and reference in regrets:
        sentence += f"; eval-loss early stopping (patience 2) {regrets[reference]:.1f}"
    # an interaction rule that kept the last checkpoint on every run is "no early stopping" under another name
    interaction = sorted((regrets[n], n) for n in regrets if kinds.get(n) == "interaction" and earlier.get(n, 1) > 0)
    if interaction and interaction[0][1] != rule and reference in regrets:
        best_regret, best_name = interaction[0]
        close = best_regret - regrets[reference] <= CLEARLY_BETTER * 100
        sentence += (f"; the best interaction-based rule that stopped early, {best_name}, {best_regret:.1f} "
                     f"({'within' if close else 'not within'} {100 * CLEARLY_BETTER:.0f} points of eval-loss "
                     "early stopping)")
    return sentence + "."


def headline(summary: dict, benchmark: dict | None = None) -> list[str]:
    """The answer in plain sentences: the recommendation, its measured quality, and what scored better.

    ``benchmark`` is the stopping benchmark's record (``stopping.benchmark_record()``); None leaves it out.
    """
    rules = summary["rules"]
    rec = rules["recommended"]
    name = summary.get("recommended_rule", rec.get("same_as", ""))
    lines = [f"Recommended checkpoint: step {rec['step']} ({name}: {rec['rule']})."]
    if rec.get("accuracy") is not None:
        quality = {q["step"]: q for q in summary.get("quality", [])}.get(rec["step"], {})
        f1 = quality.get("macro_f1")
        lines.append(f"At that step the test accuracy is {_pct(rec['accuracy'])}"
                     + (f" (macro-F1 {f1:.2f})" if f1 is not None else "") + f" and the test loss {rec['test_loss']:.3f}.")
        best = rules.get("best_test_accuracy")
        if best and best["accuracy"] - rec["accuracy"] > CLEARLY_BETTER:
            when = "A later" if best["step"] > rec["step"] else "An earlier"
            lines.append(f"{when} checkpoint scored clearly better: step {best['step']} has test accuracy "
                         f"{_pct(best['accuracy'])}, {100 * (best['accuracy'] - rec['accuracy']):.0f} points more.")
        elif best:
            lines.append(f"No checkpoint scored more than {100 * CLEARLY_BETTER:.0f} points better "
                         f"(the best: step {best['step']}, {_pct(best['accuracy'])}).")
        early = rules.get("eval_loss_patience_2")
        if name != "eval_loss_patience_2" and early and early.get("accuracy") is not None:
            gap = 100 * (rec["accuracy"] - early["accuracy"])
            verdict = (f"{abs(gap):.0f} points {'below' if gap > 0 else 'above'} the recommended checkpoint"
                       if abs(gap) > 100 * CLEARLY_BETTER
                       else f"within {100 * CLEARLY_BETTER:.0f} points of the recommended checkpoint")
            lines.append(f"Eval-loss early stopping (patience 2) would keep step {early['step']} at "
                         f"{_pct(early['accuracy'])}, {verdict}.")
    elif rec.get("test_loss") is not None:
        lines.append(f"At that step the test loss is {rec['test_loss']:.3f} (open-ended responses: no accuracy).")
    boundary = summary["stage_boundary_step"]
    at_boundary = {q["step"]: q for q in summary.get("quality", [])}.get(boundary, {})
    sentence = f"The denoising stage ends at step {boundary} (rule {summary['settings']['stage_rule']})"
    if at_boundary.get("accuracy") is not None and rec.get("accuracy") is not None:
        diff = 100 * (rec["accuracy"] - at_boundary["accuracy"])
        sentence += (f"; stopping there, as the paper suggests, keeps test accuracy {_pct(at_boundary['accuracy'])}"
                     f", {abs(diff):.0f} points {'below' if diff > 0 else 'above'} the recommended checkpoint")
    lines.append(sentence + ".")
    lines.append("This run has no separate eval split: the rules saw the test loss, so every rule's test accuracy "
                 "here is a little flattering.")
    measured = benchmark_sentence(name, benchmark)
    if measured:
        lines.append(measured)
    return lines


def rules_html(summary: dict) -> str:
    rows = []
    for name, row in summary["rules"].items():
        if name == "recommended":
            continue
        mark = " class=rec" if name == summary.get("recommended_rule") else ""
        loss = "n/a" if row["test_loss"] is None else f"{row['test_loss']:.3f}"
        rows.append(f"<tr{mark}><td>{html.escape(name)}</td><td>{html.escape(row['kind'])}</td><td class=num>{row['step']}"
                    f"</td><td class=num>{_pct(row['accuracy'])}</td><td class=num>{loss}</td>"
                    f"<td class=num>{row['compute_fraction']:.2f}</td><td>{html.escape(row['rule'])}</td></tr>")
    return ("<table id=\"rules\"><tr><th>rule</th><th>kind</th><th>keeps step</th><th>test accuracy</th>"
            "<th>test loss</th><th>compute fraction</th><th>what it does</th></tr>" + "".join(rows) + "</table>")


def _img(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<img alt="{path.stem}" src="data:image/png;base64,{data}">'


def _highlight(prompt: str, spans, words) -> str:
    out, pos = [], 0
    for (start, end), word in sorted(zip(spans, words)):
        out.append(html.escape(prompt[pos:start]))
        out.append(f'<mark title="player">{html.escape(prompt[start:end])}</mark>')
        pos = end
    out.append(html.escape(prompt[pos:]))
    return "".join(out)


def _top_table(salient: pd.DataFrame, k: int = 6) -> str:
    """The ``k`` strongest salient interactions of one unit."""
    top = salient.reindex(salient["effect"].abs().sort_values(ascending=False).index).head(k)
    rows = "".join(
        f"<tr><td>{r.kind}</td><td>{html.escape((' & ' if r.kind == 'AND' else ' | ').join(r.words.split()))}</td>"
        f"<td class=num>{r.effect:+.3f}</td></tr>"
        for r in top.itertuples()
    )
    return f"<table><tr><th>kind</th><th>words</th><th>effect</th></tr>{rows}</table>"


def build_report(run_dir: str | os.PathLike) -> Path:
    """Write the figures and ``report/index.html``; returns the HTML path."""
    run_dir = Path(run_dir)
    folder = RunFolder(run_dir)
    if not folder.summary.exists():
        raise SftscopeError(f"{run_dir}: no analysis/summary.json (run sftscope analyze first)")
    summary = read_json(folder.summary)
    dynamics = pd.read_csv(folder.table("dynamics"))
    findings = pd.read_csv(folder.table("findings"))
    losses = pd.DataFrame(read_losses(run_dir))
    quality = pd.read_csv(folder.table("quality"))
    manifest = read_json(folder.manifest)
    effects = load_effects(run_dir, [folder.unit(u["model"], u["step"], u["sample"]) for u in manifest["complete_units"]])
    target = effects[effects["model"] == "target"]
    salient = encoded(target, tau=summary["settings"]["tau"], mode=summary["settings"]["salience"])
    probes = load_probes(folder.probes)
    steps = summary["checkpoints"]
    boundary, last = summary["stage_boundary_step"], steps[-1]

    first_unit = target[(target["step"] == last) & (target["sample"] == probes[0].sample)]
    figures = [
        figure_losses(losses, quality, summary["recommended_step"], boundary, folder.figure("losses")),
        figure_types(dynamics, boundary, folder.figure("types")),
        figure_orders(pd.read_csv(folder.table("orders")), last, folder.figure("orders")),
        figure_quality(dynamics, boundary, folder.figure("quality")),
        figure_utility(summary["utility_cross_entropy"], folder.figure("utility")),
        figure_fidelity(first_unit, folder.figure("fidelity")),
    ]
    shown_steps = sorted({steps[0], boundary, last})
    samples_html = []
    for probe in probes:
        cells = []
        for step in shown_steps:
            unit = salient[(salient["step"] == step) & (salient["sample"] == probe.sample)]
            cells.append(f"<div class=cell><h4>step {step}</h4>{_top_table(unit)}</div>")
        samples_html.append(
            f"<section class=sample><h3>{html.escape(probe.sample)} ({probe.split}) &rarr; "
            f"<code>{html.escape(probe.response)}</code></h3>"
            f"<p class=prompt>{_highlight(probe.prompt, probe.players.char_spans, probe.players.words)}</p>"
            f"<div class=cells>{''.join(cells)}</div></section>"
        )
    findings = findings.fillna({"reason": ""})
    classes = {"holds": "yes", "does not hold": "no", "not measurable": "na"}
    findings_rows = "".join(
        f"<tr class={classes[f.verdict]}><td>{html.escape(f.finding)}</td><td>{html.escape(f.measured)}</td>"
        f"<td>{html.escape(f.verdict)}</td><td>{html.escape(f.reason)}</td></tr>"
        for f in findings.itertuples()
    )
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>sftscope report: {html.escape(run_dir.name)}</title>
<style>
body {{ font-family: system-ui, sans-serif; max-width: 1150px; margin: 2em auto; color: #222; }}
.recommend {{ background: #e7f4e4; border-left: 6px solid #1b7837; padding: 1em 1.4em; font-size: 1.15em; }}
table {{ border-collapse: collapse; font-size: 0.9em; }} td, th {{ border: 1px solid #ccc; padding: 3px 7px; }}
tr.yes td:nth-child(3) {{ color: #1b7837; font-weight: bold; }} tr.no td:nth-child(3) {{ color: #b2182b; }}
tr.na td:nth-child(3) {{ color: #777; }}
img {{ max-width: 100%; margin: 0.6em 0; }} mark {{ background: #ffe08a; padding: 0 2px; }}
.cells {{ display: flex; gap: 1em; flex-wrap: wrap; }} .num {{ text-align: right; font-family: monospace; }}
.sample {{ border-top: 1px solid #ddd; padding-top: 0.5em; }} tr.rec td {{ background: #e7f4e4; font-weight: bold; }}
.recommend p {{ margin: 0.3em 0; }}
</style></head><body>
<h1>sftscope report: {html.escape(run_dir.name)}</h1>
<div class="recommend" id="recommendation"><p>{'</p><p>'.join(html.escape(line) for line in headline(summary, benchmark_record()))}</p></div>
<h2>Every stopping rule on this run</h2>
{rules_html(summary)}
<p>Compute fraction: the share of the training steps a rule needs before it can decide. Minimum test loss at
step {summary['min_test_loss_step']}; correlation of the number of emerged interactions with the
test&minus;train loss gap: {_number(summary['corr_emerged_vs_loss_gap'])}.</p>
<h2>The paper's findings on this run</h2>
<table id="findings"><tr><th>finding</th><th>measured</th><th>verdict</th><th>why</th></tr>{findings_rows}</table>
<p>What each finding tests, and why: <code>docs/findings.md</code> in the sftscope repository.</p>
<h2>Figures</h2>
{''.join(_img(p) for p in figures)}
<h2>Samples: players highlighted, top interactions at steps {', '.join(map(str, shown_steps))}</h2>
{''.join(samples_html)}
</body></html>"""
    return write_text(folder.report_page, page)
