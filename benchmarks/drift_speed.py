"""Drift's cost on the whole shipped general set: this checkout against an earlier one, in one run.

Each version runs in its own fresh interpreter (``PYTHONPATH`` points at its
``src``), alternating, ``--repeats`` times: the embedded SmolLM2 in the drift
dtype (``auto``), the base model's greedy answers to all general prompts, the
base model's scores, and one checkpoint state (a merged LoRA update with random
weights, the same seed for both). The medians and their ratios are printed::

    git worktree add /tmp/before a280451       # sftscope before the drift speed-ups
    python benchmarks/drift_speed.py --before /tmp/before/src
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

ONE_RUN = r"""
import json, time, copy, torch
from peft import LoraConfig, get_peft_model
from sftscope.drift import DriftScorer, greedy_answers, load_general_set
from sftscope.drift_jobs import drift_model, resolve_dtype
from sftscope.jobs import pinned_threads
from sftscope.models import load_model_and_tokenizer

with pinned_threads(2):
    model, tokenizer = load_model_and_tokenizer("smollm2-135m-instruct")
    base = drift_model(model, resolve_dtype("auto", model)).eval()
    torch.manual_seed(0)
    peft = get_peft_model(copy.deepcopy(base), LoraConfig(r=8, lora_alpha=16, target_modules="all-linear",
                                                          init_lora_weights=False))
    state = peft.merge_and_unload().eval()
    general = load_general_set()
    began = time.perf_counter()
    answers = greedy_answers(base, tokenizer, list(general.prompts))
    seconds = {"answers": time.perf_counter() - began}
    scorer = DriftScorer(tokenizer, general, answers, ("joy", "sadness", "anger", "fear", "surprise"))
    began = time.perf_counter()
    scorer.base(base)
    seconds["base"] = time.perf_counter() - began
    began = time.perf_counter()
    scores = scorer.state(state)
    seconds["state"] = time.perf_counter() - began
print("SECONDS " + json.dumps(seconds))
print("NUMBERS " + json.dumps({"kl_per_prompt": sum(scores.kl) / len(scores.kl), "agree": sum(scores.agrees),
                              "nll": sum(scores.nll), "correct": sum(scores.correct)}))
"""


def one_run(src: Path) -> tuple[dict, dict]:
    """The seconds of each part, and the checkpoint state's numbers (the versions should agree on them)."""
    done = subprocess.run([sys.executable, "-c", ONE_RUN], env={**__import__("os").environ, "PYTHONPATH": str(src)},
                          capture_output=True, text=True, check=True)
    found = {tag: json.loads(line[len(tag) + 1:]) for line in done.stdout.splitlines()
             for tag in ("SECONDS", "NUMBERS") if line.startswith(tag + " ")}
    return found["SECONDS"], found["NUMBERS"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", required=True, help="the src folder of the earlier checkout")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args(argv)
    now = Path(__file__).resolve().parents[1] / "src"
    runs: dict[str, list[dict]] = {"before": [], "now": []}
    for _ in range(args.repeats):
        for name, src in (("before", Path(args.before).resolve()), ("now", now)):
            seconds, numbers = one_run(src)
            runs[name].append(seconds)
            print(name, {k: round(v, 1) for k, v in seconds.items()}, numbers, flush=True)
    print("| part | before | now | ratio |\n|---|---|---|---|")
    for part in ("answers", "base", "state"):
        before = statistics.median(r[part] for r in runs["before"])
        after = statistics.median(r[part] for r in runs["now"])
        print(f"| {part} | {before:.1f} s | {after:.1f} s | {before / after:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
