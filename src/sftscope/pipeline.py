"""The main job: train the target and the baseline, analyse, report; each stage skips finished work.

Run folder::

    <output_dir>/target/     SFT run of the model under study (checkpoints, losses.csv, analysis/, report/)
    <output_dir>/baseline/   SFT run of a model of another architecture on the same data
    <output_dir>/summary.json, <output_dir>/report.html   copies of the answer

A training stage is done when it wrote its ``DONE`` marker (after the last
checkpoint); an interrupted training stage restarts from step 0 (adapters are saved without
optimizer state; with the same seed the run is the same). Extraction resumes
unit by unit (see ``analyze``).
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Callable

from .config import AnalysisSettings, RunConfig, TrainConfig, baseline_config, check_report_to, with_output_dir
from .console import attach_log_file
from .data import is_local, split_pairs
from .errors import SftscopeError
from .probes import check_probe_words
from .store import JobFolder, RunFolder, claim, run_lock, write_json, write_text
from .train import finished_training, train

log = logging.getLogger(__name__)


def _train_stage(config: TrainConfig, folder: RunFolder, name: str, say: Callable[[str], None], progress) -> None:
    config = with_output_dir(config, folder.root)
    if finished_training(folder, config):  # another training's finished checkpoints: refused, never replaced
        say(f"{name}: training already done, skipped")
        return
    if folder.losses.exists():
        say(f"{name}: unfinished training found, restarting it from step 0")
    say(f"{name}: training {config.model}")
    train(config, progress=progress)  # removes what an earlier, unfinished training wrote (and only that)


def preflight(config: RunConfig) -> None:
    """Everything that can be checked before anything is written or trained: settings, data, labels, models,
    LoRA target modules, sequence lengths and probe words (the tokenizer and the model's skeleton, no weights)."""
    from .drift import load_general_set  # noqa: PLC0415
    from .models import check_available, load_tokenizer, model_skeleton  # noqa: PLC0415
    from .stopping import labels_needed  # noqa: PLC0415
    from .quality import label_set  # noqa: PLC0415
    from .train import check_lengths, check_target_modules  # noqa: PLC0415

    configs = [config.train] + ([baseline_config(config)] if config.baseline is not None else [])
    for item in configs:
        splits = split_pairs(item.data)  # data errors name file and line
        label_set(splits, item.data.labels)
        check_report_to(item.report_to, "report_to", installed=True)
        check_available(item.model)
        if item is config.train:
            check_probe_words(splits.train, splits.validation, config.analysis)
            if config.analysis.drift:
                load_general_set(config.analysis.general_prompts)  # the user's general prompts: one-line errors
            if labels_needed(config.analysis.stop_rule) and label_set(splits, item.data.labels) is None:
                raise SftscopeError(f"analysis.stop_rule {config.analysis.stop_rule} decides on validation accuracy, "
                                    "but the responses are open-ended: choose a rule on the loss (best_eval_loss), or "
                                    "name the labels in data.labels")
        tokenizer = load_tokenizer(item.model, trust_remote_code=item.trust_remote_code)
        check_lengths(tokenizer, splits._asdict(), item.max_length)
        if item.lora.target_modules != "all-linear":
            check_target_modules(model_skeleton(item.model, trust_remote_code=item.trust_remote_code),
                                 item.lora.target_modules)


def run(
    config: RunConfig, *, progress: Callable | None = None, say: Callable[[str], None] = print, **ray_options
) -> dict:
    """Train target (and baseline), analyse, report. Returns the summary.

    Checks the data, the models and the settings first, and writes only into a
    folder that is new, empty or its own. ``ray_options`` (``ray_address``,
    ``samples_per_job``, ``num_gpus``) go to ``analyze``.
    """
    preflight(config)
    folder = JobFolder(claim(config.output_dir, "job"))
    with run_lock(folder.root):
        attach_log_file(folder.log)
        return _run_locked(config, folder, progress, say, ray_options)


def _run_locked(config: RunConfig, folder: JobFolder, progress, say, ray_options) -> dict:
    from .report import build_report  # noqa: PLC0415

    _train_stage(config.train, folder.target, "target", say, progress)
    if config.baseline is not None:
        _train_stage(baseline_config(config), folder.baseline, "baseline", say, progress)
    say("analysis: task quality and interactions at every checkpoint")
    from .analyze import analyze  # noqa: PLC0415 - torch only when working: config errors stay fast

    summary = analyze(
        folder.target.root, config.analysis, baseline_run=folder.baseline.root if config.baseline is not None else None,
        progress=progress, say=say, **ray_options,
    )
    page = build_report(folder.target.root)
    write_text(folder.report, page.read_text(encoding="utf-8"))
    summary = {**summary, "report": str(folder.report), "run_config": dataclasses.asdict(config)}
    write_json(folder.summary, summary)
    return summary


def demo_config(out: str, quick: bool) -> RunConfig:
    """The embedded default: SmolLM2-135M tuned, Gemma-3-270M baseline, the shipped emotions data."""
    config = RunConfig(output_dir=out)
    if quick:
        config.train.data.max_train_examples = 16
        config.train.data.max_test_examples = 16
        config.train.max_steps = 8
        config.train.checkpoint_every = 4
        config.train.eval_train_examples = 16
        config.baseline = {"model": "gemma3-270m", "max_steps": 4}
        # drift on 24 prompts, passages and items spread over the general set: a smoke test of every part
        config.analysis = AnalysisSettings(samples_per_split=1, n_players=5, general_samples=1, drift_limit=24,
                                           whole_prompt_masks=0)
    else:
        # The baseline only needs its final checkpoint: a shorter run with light evaluation, no early checkpoints.
        config.baseline = {"model": "gemma3-270m", "max_steps": 32, "checkpoint_every": 32, "dense_checkpoints": False,
                           "eval_train_examples": 16, "data": {"max_test_examples": 16}}
        # Coverage at every result; R² on 256 random masks adds about 11 s per result on 2 cores (docs/method.md, 3b)
        config.analysis = AnalysisSettings(samples_per_split=4, n_players=7, whole_prompt_masks=0)
    return config


def dry_run(config: RunConfig) -> list[str]:
    """What ``run`` would train, extract and score, and how many forward passes that costs; loads no model.

    Counts are sequences through the model (one forward pass each): training
    sequences, evaluation sequences at the checkpoints (a training subset and
    the validation split), ``2^n`` masked prompts per probe sample and
    checkpoint, one prompt plus one continuation per label for task quality
    (validation and test), and drift's passes over the general set. Data that
    is not on this machine is not fetched.
    """
    from .config import players_cost  # noqa: PLC0415
    from .drift import MAX_NEW_TOKENS, load_general_set  # noqa: PLC0415
    from .models import local_model_note  # noqa: PLC0415
    from .quality import label_set  # noqa: PLC0415
    from .train import checkpoint_steps, total_steps  # noqa: PLC0415

    lines = [f"output folder: {config.output_dir}"]
    runs = [("target", config.train)] + ([("baseline", baseline_config(config))] if config.baseline is not None else [])
    analysis = config.analysis
    general_probes = analysis.general_samples if analysis.drift else 0
    probes = 2 * analysis.samples_per_split + general_probes
    # each result's masked prompts, plus its whole-prompt checks (coverage; R² is free for phrases, see wholeprompt.py)
    whole = 1 + (analysis.whole_prompt_masks if analysis.players == "words" else 0)
    masks = 2 ** analysis.n_players + whole
    total_passes = 0
    target = None  # (checkpoints, validation + test examples, sequences per example) of the target, when its data is here
    for name, item in runs:
        per_step = item.batch_size * item.gradient_accumulation_steps
        sizes = None
        if not all(is_local(source) for source in (item.data.train, item.data.test, item.data.validation)):
            lines.append(f"{name}: data {item.data.train!r} is not on this machine (a hub data set is fetched when the run starts; a file must be there)")
        else:
            try:
                splits = split_pairs(item.data)
                sizes = tuple(len(part) for part in splits)
            except SftscopeError as exc:
                lines.append(f"{name}: data not readable here ({exc})")
        lines.append(f"{name}: {item.model} ({local_model_note(item.model)}), LoRA r {item.lora.r} on "
                     f"{item.lora.target_modules}, lr {item.learning_rate:g} ({item.lr_scheduler}, warm-up "
                     f"{item.warmup_ratio:g}), effective batch {per_step}, {item.dtype}")
        if sizes is None:
            steps_each = f"{item.max_steps} steps" if item.max_steps > 0 else (
                f"{item.epochs:g} epochs = (training examples x {item.epochs:g} / {per_step}) steps")
            early = "0, 1, 2, 4, ... then" if item.dense_checkpoints else "0, then"
            lines.append(f"{name}: {steps_each}, {per_step} training sequences per step; checkpoints at {early} "
                         f"every {item.checkpoint_every} steps and the last, each evaluated on "
                         f"{item.eval_train_examples} training examples and the validation split")
            if name == "target":
                lines.append(f"analysis, per target checkpoint: {probes} probe samples x (2^{analysis.n_players} + "
                             f"{whole} whole-prompt) = {probes * masks:,} masked prompts "
                             f"({players_cost(analysis.n_players)}), and a prompt "
                             "pass plus one continuation per label for each validation and test example (task quality)")
            continue
        total = total_steps(item, sizes[0])
        steps = checkpoint_steps(total, item.checkpoint_every, item.dense_checkpoints)
        train_seqs = total * per_step
        eval_seqs = len(steps) * (min(item.eval_train_examples, sizes[0]) + sizes[1])
        total_passes += train_seqs + eval_seqs
        lines.append(f"{name}: {sizes[0]} train / {sizes[1]} validation / {sizes[2]} test examples; {total} steps; "
                     f"{len(steps)} checkpoints ({', '.join(map(str, steps[:8]))}{', ...' if len(steps) > 8 else ''}); "
                     f"{train_seqs:,} training and {eval_seqs:,} evaluation sequences")
        if name == "target":
            labels = label_set(splits, item.data.labels)
            target = len(steps), sizes[1] + sizes[2], 2 if labels is None else 1 + len(labels)
    if target is not None:
        target_steps, scored, per_example = target
        task_probes = 2 * analysis.samples_per_split  # the baseline is extracted on the task probes only
        extraction = target_steps * probes * masks + (task_probes * masks if config.baseline is not None else 0)
        quality = target_steps * scored * per_example
        total_passes += extraction + quality
        lines.append(f"analysis: {probes} probe samples ({analysis.samples_per_split} train, "
                     f"{analysis.samples_per_split} validation, {general_probes} general) x {target_steps} target "
                     f"checkpoints{' + the baseline checkpoint' if config.baseline is not None else ''}, n_players "
                     f"{analysis.n_players} ({players_cost(analysis.n_players)}) + {whole} whole-prompt checks each: "
                     f"{extraction:,} masked prompts")
        lines.append(f"task quality: {scored} validation and test examples at {target_steps} checkpoints: {quality:,} "
                     f"sequences (a prompt pass and {per_example - 1} continuation(s) each)")
        if analysis.drift:
            try:
                general = load_general_set(analysis.general_prompts, analysis.drift_limit)
            except SftscopeError as exc:
                lines.append(f"drift: the general prompts are not readable here ({exc})")
            else:
                states = target_steps + 1  # every checkpoint and the base model (adapter disabled), in one pass
                per_state = 2 * len(general.prompts) + len(general.passages) + 2 * len(general.items)
                drift = states * per_state + len(general.prompts)  # and the base model's greedy answers, once
                total_passes += drift
                lines.append(f"drift: {len(general.prompts)} general prompts (base answers of at most "
                             f"{MAX_NEW_TOKENS} tokens, generated once), {len(general.passages)} passages and "
                             f"{len(general.items)} knowledge items, for the base model and {target_steps} checkpoints: "
                             f"about {drift:,} sequences ({analysis.drift_dtype} precision)")
        else:
            lines.append("drift: off (analysis.drift: false)")
        lines.append(f"in all: about {total_passes:,} sequences through the models")
    lines.append("nothing was loaded, trained or written (--dry-run)")
    return lines
