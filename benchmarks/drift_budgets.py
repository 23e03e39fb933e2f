"""What drift looks like on the whole shipped general set, to set best_within_drift's budgets from measurements.

Scores the base model and chosen checkpoints of finished runs (e.g. the
stopping benchmark's cached runs) on all 210 general prompts, 100 passages and
320 knowledge items, and prints per checkpoint the KL, the knowledge change
with its 95% interval and the format drift. Two numbers set the defaults:
the width of the knowledge change's interval (a budget below it would refuse
checkpoints for noise) and the format drift the runs reach::

    python benchmarks/drift_budgets.py benchmarks/.stopping-runs/emotions-64-s0/target 8 48
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from sftscope.config import load_trained_config
from sftscope.data import split_pairs
from sftscope.drift import DriftScorer, drift_numbers, greedy_answers, load_general_set, passage_tokens
from sftscope.drift_jobs import drift_model, resolve_dtype
from sftscope.models import load_checkpoint, load_model_and_tokenizer
from sftscope.quality import label_set
from sftscope.store import RunFolder


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="a run folder (its target)")
    parser.add_argument("steps", type=int, nargs="+")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "drift_budgets.json")
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(2)
    folder = RunFolder(args.run)
    config = load_trained_config(folder.config)
    labels = label_set(split_pairs(config.data), config.data.labels)
    model, tokenizer = load_model_and_tokenizer(config.model)
    base = drift_model(model, resolve_dtype("auto", model)).eval()
    general = load_general_set()
    began = time.perf_counter()
    answers = greedy_answers(base, tokenizer, list(general.prompts), batch_size=64)
    scorer = DriftScorer(tokenizer, general, answers, labels)
    reference = scorer.base(base)
    base_seconds = time.perf_counter() - began
    rows = []
    print(f"{args.run}: base answers and base scores {base_seconds:.0f} s; base knowledge "
          f"{sum(reference.correct) / len(reference.correct):.1%} (chance 25%)")
    for step in args.steps:
        began = time.perf_counter()
        state = scorer.state(load_checkpoint(base, folder.checkpoints()[step]))
        numbers = drift_numbers(reference, state, answer_tokens=[len(a) for a in answers],
                                passage_tokens=passage_tokens(tokenizer, general), labels=labels)
        seconds = time.perf_counter() - began
        k, f = numbers["knowledge"], numbers["format"]
        rows.append({"step": step, "seconds": seconds, **numbers})
        print(f"step {step}: {seconds:.0f} s; KL {numbers['kl']['mean']:.3f}; general NLL change "
              f"{numbers['general_nll']['change']:+.3f}; knowledge {100 * k['change']:+.1f} points "
              f"[{100 * k['low']:+.1f}, {100 * k['high']:+.1f}] ({k['lost']} lost, {k['gained']} gained); "
              f"label answers {f['label_share']:.1%} (base {f['base_label_share']:.1%}); agreement {f['agreement']:.1%}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"run": str(args.run), "base_seconds": base_seconds, "rows": rows}, indent=1),
                        encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
