"""The answer in plain sentences, from a run's ``summary.json``: what to keep, what it gains, what it costs.

Pure functions over the summary and the stopping benchmark's record; the
report's first box and the CLI print them. Every number comes from the
summary: nothing here is measured.
"""

from __future__ import annotations

CLEARLY_BETTER = 0.02  # accuracy: a checkpoint this much better than the recommended one is called out
CLEARLY_CHEAPER = 0.5  # drift: a checkpoint whose KL is at most this share of the recommended one's costs clearly less


def pct(value) -> str:
    return "n/a" if value is None else f"{100 * value:.0f}%"


def number(value) -> str:
    return "undefined" if value is None else f"{value:.2f}"


def correlation_clause(forgetting: dict, key: str, what: str) -> str:
    """How the removal correlates with ``what`` across checkpoints, or why no r exists (as the summary says)."""
    r = forgetting.get(f"corr_removal_vs_{key}")
    if r is not None:
        return f"correlates with {what} at r = {r:.2f}"
    why = forgetting.get(f"why_no_corr_removal_vs_{key}")
    return f"has no correlation with {what}" + (f" ({why})" if why else "")


def points(value) -> str:
    return f"{100 * value:+.1f}"


def _drift_rows(summary: dict) -> dict[int, dict]:
    drift = summary.get("drift") or {}
    return {row["step"]: row for row in drift.get("per_checkpoint", [])}


def cost_sentence(step: int, drift: dict, what: str = "It") -> str:
    """What a checkpoint costs outside the task: KL, knowledge change with its interval, format drift."""
    kl, knowledge, fmt = drift["kl"], drift["knowledge"], drift["format"]
    sentence = (f"{what} costs the model outside its task: KL from the base model {kl['mean']:.2f} nats per token "
                f"(95% interval {kl['low']:.2f}-{kl['high']:.2f}) on the base model's answers to "
                f"{kl['prompts']} general prompts; knowledge {pct(knowledge['checkpoint'])} against the base model's "
                f"{pct(knowledge['base'])} on {knowledge['items']} items ({points(knowledge['change'])} points, "
                f"95% interval {points(knowledge['low'])} to {points(knowledge['high'])}; {knowledge['lost']} lost, "
                f"{knowledge['gained']} gained)")
    if fmt.get("label_share") is not None:
        sentence += (f"; {pct(fmt['label_share'])} of the general prompts answered with a task label "
                     f"(base model: {pct(fmt['base_label_share'])})")
    sentence += f"; its greedy answer is the base model's on {pct(fmt['agreement'])} of them."
    return sentence


def cheaper_checkpoint(summary: dict) -> tuple[int, dict, dict] | None:
    """A checkpoint within ``CLEARLY_BETTER`` of the recommended one's test accuracy that costs clearly less, if any.

    Clearly less: at most half the KL, no larger knowledge drop and no more
    label answers; of several, the one with the lowest KL.
    """
    rec = summary["rules"]["recommended"]
    rows = _drift_rows(summary)
    if rec.get("accuracy") is None or rec["step"] not in rows:
        return None
    mine = rows[rec["step"]]
    if mine["kl"]["mean"] <= 0:
        return None  # the recommendation is the base model itself: nothing costs less
    share = lambda row: row["format"].get("label_share") or 0.0  # noqa: E731
    candidates = []
    for quality in summary.get("quality", []):
        step = quality["step"]
        if step == rec["step"] or step not in rows or quality.get("accuracy") is None:
            continue
        other = rows[step]
        if (quality["accuracy"] >= rec["accuracy"] - CLEARLY_BETTER - 1e-9
                and other["kl"]["mean"] <= CLEARLY_CHEAPER * mine["kl"]["mean"]
                and other["knowledge"]["change"] >= mine["knowledge"]["change"] - 1e-9
                and share(other) <= share(mine) + 1e-9):
            candidates.append((other["kl"]["mean"], step, quality, other))
    if not candidates:
        return None
    _, step, quality, other = min(candidates)
    return step, quality, other


def coverage_sentence(summary: dict, step: int) -> str | None:
    """How much of each probe prompt the players carry at ``step``: the caveat every interaction number lives under."""
    rows = [r for r in summary.get("whole_prompt") or [] if r["model"] == "target" and r["step"] == step
            and r.get("coverage") is not None]
    if not rows:
        return None
    settings = summary.get("settings", {})
    kind = settings.get("players", "words")
    order = {"train": 0, "validation": 1, "test": 2, "general": 3}
    rows.sort(key=lambda r: (order.get(r["split"], 9), r["split"]))
    parts = []
    for r in rows:
        part = f"{r['split']} {r['coverage']:.2f}"
        if r.get("whole_r2") is not None:
            part += f" (whole-prompt R\u00b2 {r['whole_r2']:.2f})"
        parts.append(part)
    sentence = (f"The interactions are between {settings.get('n_players', 'the')} {kind[:-1]} players per prompt; at "
                f"step {step} they carry this share of the output change from masking each prompt's whole content "
                f"(median per split, 1 = all of it): {', '.join(parts)}.")
    if kind == "words" and any(not 0.5 <= r["coverage"] <= 1.5 for r in rows):
        sentence += (" Outside 0.5-1.5 the rest of the prompt changes what the players do, so the interaction "
                     "findings describe the players, not the whole prompt (phrase players cover every word).")
    return sentence


def benchmark_sentence(rule: str, record: dict | None) -> str | None:
    """What the stopping benchmark measured for ``rule`` and the plain rules beside it."""
    if not record or rule not in record.get("heldout_mean_regret", {}):
        return None
    regrets, intervals = record["heldout_mean_regret"], record.get("heldout_regret_interval", {})

    def said(name: str) -> str:
        low, high = intervals.get(name, (None, None))
        span = f" (95% interval {low:.1f}-{high:.1f})" if low is not None else ""
        return f"{regrets[name]:.1f}{span}"

    sentence = (f"In sftscope's stopping benchmark ({record['n_runs']} SFT runs on {len(record['datasets'])} data "
                f"sets, each rule deciding on validation data and judged on a test split no rule saw; "
                f"BENCHMARKS.md), {rule} kept checkpoints on average {said(rule)} accuracy points below the best one "
                "of each held-out run")
    others = [name for name in ("best_eval_accuracy", "eval_loss_patience_2", "last", "cumulative")
              if name != rule and name in regrets]
    if others:
        sentence += "; " + ", ".join(f"{name} {regrets[name]:.1f}" for name in others)
    reason = record.get("default_reason")
    if reason and rule == record.get("default_rule"):
        sentence += ". " + reason.rstrip(".")  # the record's reason is a clause; the answer prints it as a sentence
    return sentence + "."


def headline(summary: dict, benchmark: dict | None = None) -> list[str]:
    """The answer: the recommendation, its measured quality and cost, what scored better or cost less.

    ``benchmark`` is the stopping benchmark's record (``stopping.benchmark_record()``); None leaves it out.
    """
    rules = summary["rules"]
    rec = rules["recommended"]
    name = summary.get("recommended_rule", rec.get("same_as", ""))
    quality_by_step = {q["step"]: q for q in summary.get("quality", [])}
    drift_by_step = _drift_rows(summary)
    lines = [f"Recommended checkpoint: step {rec['step']} ({name}: {rec['rule']})."]
    if rec.get("accuracy") is not None:
        f1 = quality_by_step.get(rec["step"], {}).get("macro_f1")
        lines.append(f"At that step the test accuracy is {pct(rec['accuracy'])}"
                     + (f" (macro-F1 {f1:.2f})" if f1 is not None else "") + f" and the test loss {rec['test_loss']:.3f}.")
    elif rec.get("test_loss") is not None:
        lines.append(f"At that step the test loss is {rec['test_loss']:.3f} (open-ended responses: no accuracy).")
    if rec["step"] in drift_by_step:
        lines.append(cost_sentence(rec["step"], drift_by_step[rec["step"]]))
        cheaper = cheaper_checkpoint(summary)
        if cheaper is not None:
            step, quality, other = cheaper
            lines.append(f"Step {step} loses at most {100 * CLEARLY_BETTER:.0f} points of that accuracy "
                         f"({pct(quality['accuracy'])}) and costs clearly less: KL {other['kl']['mean']:.2f}, "
                         f"knowledge {points(other['knowledge']['change'])} points"
                         + (f", {pct(other['format']['label_share'])} label answers"
                            if other["format"].get("label_share") is not None else "") + ".")
        elif rec.get("accuracy") is not None:
            missing = (summary.get("drift") or {}).get("missing") or []
            among = f" among the {len(drift_by_step)} with drift measured" if missing else ""
            lines.append(f"No checkpoint{among} within {100 * CLEARLY_BETTER:.0f} points of its test accuracy costs "
                         f"clearly less (at most {100 * CLEARLY_CHEAPER:.0f}% of its KL, no larger knowledge drop, no "
                         "more label answers).")
    elif summary.get("drift") is None and summary.get("settings", {}).get("drift") is False:
        lines.append("What it costs outside the task was not measured (analysis.drift: false).")
    if rec.get("accuracy") is not None:
        best = rules.get("best_test_accuracy")
        if best and best["accuracy"] - rec["accuracy"] > CLEARLY_BETTER:
            when = "A later" if best["step"] > rec["step"] else "An earlier"
            lines.append(f"{when} checkpoint scored clearly better: step {best['step']} has test accuracy "
                         f"{pct(best['accuracy'])}, {100 * (best['accuracy'] - rec['accuracy']):.0f} points more.")
        elif best:
            lines.append(f"No checkpoint scored more than {100 * CLEARLY_BETTER:.0f} points better "
                         f"(the best: step {best['step']}, {pct(best['accuracy'])}).")
        early = rules.get("eval_loss_patience_2")
        if name != "eval_loss_patience_2" and early and early.get("accuracy") is not None:
            gap = 100 * (rec["accuracy"] - early["accuracy"])
            verdict = (f"{abs(gap):.0f} points {'below' if gap > 0 else 'above'} the recommended checkpoint"
                       if abs(gap) > 100 * CLEARLY_BETTER
                       else f"within {100 * CLEARLY_BETTER:.0f} points of the recommended checkpoint")
            lines.append(f"Eval-loss early stopping (patience 2, on the validation loss) would keep step "
                         f"{early['step']} at {pct(early['accuracy'])}, {verdict}.")
    boundary = summary["stage_boundary_step"]
    at_boundary = quality_by_step.get(boundary, {})
    sentence = f"The denoising stage ends at step {boundary} (rule {summary['settings']['stage_rule']})"
    if at_boundary.get("accuracy") is not None and rec.get("accuracy") is not None:
        diff = 100 * (rec["accuracy"] - at_boundary["accuracy"])
        sentence += (f"; stopping there, as the paper suggests, keeps test accuracy {pct(at_boundary['accuracy'])}"
                     f", {abs(diff):.0f} points {'below' if diff > 0 else 'above'} the recommended checkpoint")
    if boundary in drift_by_step and rec["step"] in drift_by_step and boundary != rec["step"]:
        sentence += (f", at KL {drift_by_step[boundary]['kl']['mean']:.2f} against "
                     f"{drift_by_step[rec['step']]['kl']['mean']:.2f}")
    lines.append(sentence + ".")
    forgetting = (summary.get("drift") or {}).get("forgetting") or {}
    removed = forgetting.get("general_removed_share") or {}
    if removed:
        last = max(removed, key=int)
        lines.append(f"On general prompts SFT removed {pct(removed[last])} of the base model's salient interactions by "
                     f"step {last}; across checkpoints that removal {correlation_clause(forgetting, 'kl', 'the KL')} "
                     f"and {correlation_clause(forgetting, 'knowledge_change', 'the knowledge change')}.")
    covered = coverage_sentence(summary, rec["step"])
    if covered:
        lines.append(covered)
    splits = summary.get("splits")
    if splits:
        lines.append(f"Every rule decided on the validation split ({splits['validation']} examples) and the training "
                     f"run; the test split ({splits['test']} examples) only judges their picks.")
    lines += summary.get("data_notes", [])
    measured = benchmark_sentence(name, benchmark)
    if measured:
        lines.append(measured)
    return lines
