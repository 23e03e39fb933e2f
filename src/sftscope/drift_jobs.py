"""Drift at every checkpoint of a run, stored like task quality: one unit per checkpoint, tied to its inputs.

The base model's greedy answers are generated once per run and stored
(``analysis/drift/base-answers.json``); each checkpoint's measures are a unit
(``analysis/drift/target/step-<step>.json``) that carries what it was computed
from (the checkpoint's content hash, the model, the general set, the base
answers, the labels, the dtype). A changed input recomputes exactly the units
it changes; the missing ones are scored together in one pass (``drift.py``).
"""

from __future__ import annotations

import copy
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .drift import MAX_NEW_TOKENS, DriftScorer, GeneralSet, drift_numbers, greedy_answers, passage_tokens
from .models import zero_adapter
from .store import RunFolder, changed_keys, checkpoint_digest, digest, read_json, write_json

log = logging.getLogger(__name__)

SCORING = "drift v2"  # bump when the measures or their arithmetic change: stored units are then recomputed
EXAMPLES = ("What is the capital of France?", "How many legs does a spider have?",
            "Translate 'good morning' into Spanish.", "Write a haiku about autumn leaves.")


@dataclass(frozen=True)
class DriftTask:
    """What drift is measured on and how: the general set, the task's labels (format), the dtype."""

    general: GeneralSet
    labels: tuple[str, ...] | None
    dtype: str
    max_new_tokens: int = MAX_NEW_TOKENS

    def reference_inputs(self, model_name: str) -> dict:
        return {"model": model_name, "prompts": digest(list(self.general.prompts)), "dtype": self.dtype,
                "max_new_tokens": self.max_new_tokens, "scoring": SCORING}

    def inputs(self, model_name: str, checkpoint: str, reference: str) -> dict:
        return {"checkpoint": checkpoint, "model": model_name, "general": self.general.digest(), "answers": reference,
                "labels": list(self.labels) if self.labels else None, "dtype": self.dtype, "scoring": SCORING}


def native_bfloat16(device) -> bool:
    """Whether bfloat16 matrix products are native here (a CUDA GPU that has them; a CPU with AMX or AVX-512 BF16)."""
    import torch  # noqa: PLC0415

    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type != "cpu":
        return False
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return " amx_bf16" in flags or " avx512_bf16" in flags


def resolve_dtype(setting: str, model) -> str:
    """``analysis.drift_dtype``: ``auto`` is bfloat16 where it is native (three times faster on such CPUs), else float32."""
    if setting != "auto":
        return setting
    return "bfloat16" if native_bfloat16(next(model.parameters()).device) else "float32"


def drift_model(base_model, dtype: str):
    """The base model in the drift dtype: itself when it has it, else a converted copy (the analysis keeps its own)."""
    import torch  # noqa: PLC0415

    wanted = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]
    if next(base_model.parameters()).dtype == wanted:
        return base_model
    return copy.deepcopy(base_model).to(wanted)


def base_answers(folder: RunFolder, model, tokenizer, task: DriftTask, model_name: str, *,
                 progress: Callable | None = None, say: Callable[[str], None] | None = None) -> dict:
    """The base model's greedy answers to the general prompts: stored once, generated again only when their inputs change."""
    wanted = task.reference_inputs(model_name)
    path = folder.drift_reference
    try:
        stored = read_json(path)
    except (OSError, ValueError):
        stored = None
    if isinstance(stored, dict) and stored.get("inputs") == wanted and len(stored.get("answers", [])) == len(task.general.prompts):
        return stored
    if stored is not None and say:
        say(f"drift: base answers generated again: {', '.join(changed_keys(stored.get('inputs') if isinstance(stored, dict) else None, wanted))} changed")
    began = time.perf_counter()
    answers = greedy_answers(model, tokenizer, task.general.prompts, max_new_tokens=task.max_new_tokens,
                             progress=progress)
    texts = [tokenizer.decode(a, skip_special_tokens=True).strip() for a in answers]
    record = {"inputs": wanted, "digest": digest(answers), "answers": answers, "texts": texts,
              "seconds": round(time.perf_counter() - began, 3)}
    write_json(path, record)
    return record


def current(folder: RunFolder, step: int, wanted: dict) -> bool:
    try:
        stored = read_json(folder.drift_unit("target", step))
    except (OSError, ValueError):
        return False
    return isinstance(stored, dict) and stored.get("inputs") == wanted


def drift_run(folder: RunFolder, model, tokenizer, model_name: str, checkpoints: dict[int, Path], task: DriftTask,
              reference: dict, *, progress: Callable | None = None, say: Callable[[str], None] | None = None) -> int:
    """Score every checkpoint whose drift unit is missing or stale; returns how many were written.

    ``model`` is the base model in the drift dtype (``drift_model``): scored
    first, then each checkpoint as a copy with its adapter merged in. Each
    unit is written as soon as its checkpoint is scored.
    """
    from .models import load_checkpoint  # noqa: PLC0415

    digests = {step: checkpoint_digest(path) for step, path in checkpoints.items()}
    wanted = {step: task.inputs(model_name, digests[step], reference["digest"]) for step in checkpoints}
    pending = [step for step in checkpoints if not current(folder, step, wanted[step])]
    if not pending:
        return 0
    stale = [step for step in pending if folder.drift_unit("target", step).exists()]
    if stale and say:
        say(f"drift: recomputing {len(stale)} stored checkpoint(s) whose inputs changed")
    scorer = DriftScorer(tokenizer, task.general, reference["answers"], task.labels)
    bar = progress(total=len(pending) + 1, desc="drift (base model, then checkpoints)") if progress else None
    began = time.perf_counter()
    base = scorer.base(model)
    base_seconds = time.perf_counter() - began
    if bar:
        bar.update(1)
    answer_tokens = [len(a) for a in reference["answers"]]
    tokens = passage_tokens(tokenizer, task.general)
    for step in pending:
        began = time.perf_counter()
        zero = zero_adapter(checkpoints[step])  # a fresh adapter changes nothing: it is the base model
        state = base if zero else scorer.state(load_checkpoint(model, checkpoints[step]))
        numbers = drift_numbers(base, state, answer_tokens=answer_tokens, passage_tokens=tokens, labels=task.labels)
        examples = [{"prompt": p, "base": reference["texts"][i], "checkpoint": state.opening[i]}
                    for i, p in enumerate(task.general.prompts) if p in EXAMPLES]
        write_json(folder.drift_unit("target", step), {
            "step": step, "inputs": wanted[step], **numbers, "examples": examples, "per_prompt_kl": state.kl,
            "zero_adapter": zero, "seconds": round(time.perf_counter() - began, 3),
            "base_seconds": round(base_seconds, 3)})
        if bar:
            bar.update(1)
    if bar:
        bar.close()
    return len(pending)


def drift_table(folder: RunFolder, steps: list[int]) -> list[dict]:
    """The stored drift of each checkpoint (missing ones as None), for the summary."""
    rows = []
    for step in steps:
        try:
            unit = read_json(folder.drift_unit("target", step))
        except (OSError, ValueError):
            unit = None
        rows.append(unit if isinstance(unit, dict) else {"step": step, "missing": True})
    return rows
