"""The self-contained HTML report: the answer, every rule, drift, the findings, the figures, the samples.

Reads what ``analyze`` stored in a run folder; computes nothing new beyond
re-shaping it for the eye. Every figure is a PNG in ``<run>/report/``
(``figures.py``) and is embedded (base64) in ``<run>/report/index.html``: the
page makes no request.
"""

from __future__ import annotations

import base64
import html
import os
from pathlib import Path

import pandas as pd

from .dynamics import encoded
from .errors import SftscopeError
from .figures import (
    figure_fidelity, figure_forgetting, figure_losses, figure_orders, figure_quality, figure_types, figure_utility,
)
from .headline import headline, number, pct, points
from .probes import TASK_SPLITS, load_probes
from .stopping import benchmark_record
from .store import RunFolder, load_effects, read_json, read_losses, write_text

PLAYER_NOUN = {"words": "word", "phrases": "phrase"}  # analysis.players, as the samples' heading names it
CLEARLY_BETTER = 0.02  # accuracy: a checkpoint this much better than the recommended one is called out


def _cell(value, fmt) -> str:
    return "n/a" if value is None else fmt(value)


def rules_html(summary: dict) -> str:
    """Every rule: what it keeps, how good that is on validation (what it saw) and test, what it costs, when it knew."""
    rows = []
    for name, row in summary["rules"].items():
        if name == "recommended":
            continue
        mark = " class=rec" if name == summary.get("recommended_rule") else ""
        if row["step"] is None:
            rows.append(f"<tr{mark}><td>{html.escape(name)}</td><td>{html.escape(row['kind'])}</td>"
                        f"<td colspan=8>does not apply: {html.escape(row.get('not_applicable', ''))}</td>"
                        f"<td>{html.escape(row['rule'])}</td></tr>")
            continue
        cells = [row["step"], _cell(row.get("validation_accuracy"), pct), _cell(row["accuracy"], pct),
                 _cell(row["test_loss"], lambda v: f"{v:.3f}"), _cell(row.get("kl"), lambda v: f"{v:.2f}"),
                 _cell(row.get("knowledge_change"), points), _cell(row.get("label_share"), pct),
                 _cell(row["compute_fraction"], lambda v: f"{v:.2f}")]
        rows.append(f"<tr{mark}><td>{html.escape(name)}</td><td>{html.escape(row['kind'])}</td>"
                    + "".join(f"<td class=num>{c}</td>" for c in cells) + f"<td>{html.escape(row['rule'])}</td></tr>")
    return ("<table id=\"rules\"><tr><th>rule</th><th>kind</th><th>keeps step</th><th>validation accuracy</th>"
            "<th>test accuracy</th><th>test loss</th><th>KL</th><th>knowledge (points)</th><th>label answers</th>"
            "<th>compute fraction</th><th>what it does</th></tr>" + "".join(rows) + "</table>")


def drift_html(summary: dict) -> str:
    """Drift at every checkpoint, with the intervals, and the base model's answers beside the checkpoints'."""
    drift = summary.get("drift")
    if not drift:
        return "<p>Drift was not measured on this run (analysis.drift: false).</p>"
    rows = []
    for r in drift["per_checkpoint"]:
        kl, nll, know, fmt = r["kl"], r["general_nll"], r["knowledge"], r["format"]
        rows.append(f"<tr><td class=num>{r['step']}</td><td class=num>{kl['mean']:.3f} [{kl['low']:.3f}, "
                    f"{kl['high']:.3f}]</td><td class=num>{nll['change']:+.3f}</td><td class=num>{pct(know['checkpoint'])}"
                    f" ({points(know['change'])} [{points(know['low'])}, {points(know['high'])}])</td>"
                    f"<td class=num>{know['lost']} / {know['gained']}</td><td class=num>{_cell(fmt['label_share'], pct)}"
                    f"</td><td class=num>{pct(fmt['agreement'])}</td></tr>")
    first = drift["per_checkpoint"][0]
    head = (f"<p>Against the base model on {first['kl']['prompts']} general prompts (its own greedy answers, "
            f"{first['kl']['tokens']:,} tokens), {first['general_nll']['passages']} general text passages "
            f"({first['general_nll']['tokens']:,} tokens) and {first['knowledge']['items']} knowledge items "
            f"(the base model scores {pct(first['knowledge']['base'])}; chance is 25%). Intervals: 95% bootstrap.</p>")
    table = ("<table id=\"drift\"><tr><th>step</th><th>KL per token</th><th>general NLL change</th>"
             "<th>knowledge (change, points)</th><th>lost / gained</th><th>label answers</th>"
             "<th>same answer as base</th></tr>" + "".join(rows) + "</table>")
    steps = sorted({summary["stage_boundary_step"], summary["recommended_step"], drift["per_checkpoint"][-1]["step"]})
    by_step = {r["step"]: r for r in drift["per_checkpoint"]}
    examples = ""
    if by_step[steps[-1]].get("examples"):
        heads = "".join(f"<th>step {s}: first tokens</th>" for s in steps if s in by_step)
        body = ""
        for k, example in enumerate(by_step[steps[-1]]["examples"]):
            cells = "".join(f"<td>{html.escape(by_step[s]['examples'][k]['checkpoint'])}</td>" for s in steps if s in by_step)
            body += f"<tr><td>{html.escape(example['prompt'])}</td><td>{html.escape(example['base'])}</td>{cells}</tr>"
        examples = (f"<h3>Answers to general prompts</h3><table id=\"examples\"><tr><th>prompt</th><th>base model</th>"
                    f"{heads}</tr>{body}</table>")
    return head + table + examples


def whole_prompt_html(summary: dict) -> str:
    """Coverage and whole-prompt R² per checkpoint and split: how much of each prompt the players explain."""
    rows = [r for r in summary.get("whole_prompt") or [] if r["model"] == "target"]
    if not rows:
        return "<p>These results were stored before sftscope measured coverage; analyse the run again to add it.</p>"
    masks = max(r["whole_masks"] or 0 for r in rows)
    splits = sorted({r["split"] for r in rows}, key=lambda s: (s not in TASK_SPLITS, s))
    head = "".join(f"<th>{html.escape(s)}: coverage</th><th>{html.escape(s)}: R&sup2;</th>" for s in splits)
    by_key = {(r["step"], r["split"]): r for r in rows}
    body = ""
    for step in sorted({r["step"] for r in rows}):
        cells = ""
        for split in splits:
            r = by_key.get((step, split))
            cells += (f"<td class=num>{_cell(r and r['coverage'], number)}</td>"
                      f"<td class=num>{_cell(r and r['whole_r2'], number)}</td>")
        body += f"<tr><td class=num>{step}</td>{cells}</tr>"
    r2_note = (f"R&sup2;: the AND-OR fit, which sees only the players, against the model on {masks} random masks "
               "over all units (each player, and each word outside the players, present with probability 1/2)."
               if masks else "R&sup2; was not computed on this run (analysis.whole_prompt_masks: 0): for word players it "
               "costs that many forward passes of each probe prompt at every checkpoint; phrase players get it free.")
    return (f"<p>Medians over each split's probe prompts. Coverage: the output change from masking the players, "
            f"against masking every word of the prompt's content (1: the players carry it all). {r2_note}</p>"
            f"<table id=\"whole-prompt\"><tr><th>step</th>{head}</tr>{body}</table>")


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
    dynamics = dynamics[dynamics["split"].isin(TASK_SPLITS)]  # the paper's panels are about the task's probes
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
    drift = pd.read_csv(folder.table("drift")).set_index("step") if folder.table("drift").exists() and summary.get("drift") else None
    if drift is not None:
        picks = {name: row["step"] for name, row in summary["rules"].items()
                 if name != "recommended" and row["step"] is not None}
        figures.insert(1, figure_forgetting(quality, drift, picks, folder.figure("forgetting")))
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
<p>Every rule saw the validation split and the training run only; the test columns judge the checkpoint it kept.
Compute fraction: the share of the training steps a rule needs before it can decide. Minimum validation loss at
step {summary['min_validation_loss_step']}, minimum test loss at step {summary['min_test_loss_step']}; correlation of
the number of emerged interactions with the test&minus;train loss gap: {number(summary['corr_emerged_vs_loss_gap'])}.</p>
<h2>What each checkpoint costs outside the task</h2>
{drift_html(summary)}
<h2>How much of each prompt the players explain</h2>
{whole_prompt_html(summary)}
<h2>The paper's findings on this run</h2>
<table id="findings"><tr><th>finding</th><th>measured</th><th>verdict</th><th>why</th></tr>{findings_rows}</table>
<p>What each finding tests, and why: <code>docs/findings.md</code> in the sftscope repository.</p>
<h2>Figures</h2>
{''.join(_img(p) for p in figures)}
<h2>Samples: {PLAYER_NOUN.get(summary.get('settings', {}).get('players'), 'word')} players highlighted, top interactions at steps {', '.join(map(str, shown_steps))}</h2>
{''.join(samples_html)}
</body></html>"""
    return write_text(folder.report_page, page)
