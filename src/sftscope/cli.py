"""The ``sftscope`` command line: commands, options, one-line errors."""

from __future__ import annotations

import argparse
import sys

from .config import AnalysisSettings
from .errors import SftscopeError


def _extract(args: argparse.Namespace) -> int:
    from .config import check_players  # noqa: PLC0415
    from .extract import extract_interactions  # noqa: PLC0415 - keep --help fast
    from .models import load_model_and_tokenizer  # noqa: PLC0415

    check_players(args.players, "--players")  # before loading anything
    if args.players_kind == "phrases" and args.selection is not None:
        raise SftscopeError(f"--selection {args.selection} chooses word players; phrase players cover every word "
                            "of the prompt: drop --selection, or use --players-kind words")
    args.selection = args.selection or "ablation"
    if not args.prompt.strip():
        raise SftscopeError("--prompt is empty: nothing to explain")
    if args.out:
        args.out = _result_path(args.out)
    model, tokenizer = load_model_and_tokenizer(
        args.model, dtype=args.dtype, device=args.device, trust_remote_code=args.trust_remote_code
    )
    print(extraction_cost(model, tokenizer, args), file=sys.stderr)
    result = extract_interactions(
        model,
        tokenizer,
        args.prompt,
        args.response,
        n_players=args.players,
        selection=args.selection,
        seed=args.seed,
        allow_fewer=args.allow_fewer,
        baseline=args.baseline,
        noise_bound=args.noise_bound,
        tau=args.tau,
        engine=args.engine,
        progress=None if args.quiet else _progress(),
        players_kind=args.players_kind,
        whole_prompt_masks=args.whole_prompt_masks,
    )
    if args.out:
        result.to_parquet(args.out)
    d = result.decomposition
    separator = " | " if args.players_kind == "phrases" else ", "  # a phrase may hold commas
    print(f"players ({len(result.players)}): {separator.join(result.players.words)}")
    print(f"target token: {result.target_token!r}   v(N) = {d.values[-1]:.4f}   v(0) = {d.values[0]:.4f}")
    print(f"bias {d.bias:.4f}   L1 objective {d.objective:.4f}   matching error {d.matching_error:.2e}")
    print(whole_prompt_line(result.whole))
    table = result.top_table(args.top)
    print(f"{len(result.salient())} salient interactions (tau = {args.tau}); top {len(table)}:")
    print(table.to_string(index=False) if len(table) else "(none)")
    if args.out:
        print(f"all effects written to {args.out}")
    return 0


def extraction_cost(model, tokenizer, args) -> str:
    """What ``extract`` is about to compute, in forward passes of the rendered prompt (said before the work)."""
    from .data import nfc  # noqa: PLC0415
    from .extract import check_context  # noqa: PLC0415
    from .players import tokenize_prompt  # noqa: PLC0415

    rendered = tokenize_prompt(tokenizer, nfc(args.prompt))
    tokens, candidates = len(rendered.input_ids), len(rendered.candidates)
    check_context(model, tokens)
    whole = f"; whole-prompt checks: {1 + args.whole_prompt_masks:,} more" if args.players_kind == "words" else ""
    if args.players_kind == "phrases":
        from .phrases import choose_phrases  # noqa: PLC0415

        n = len(choose_phrases(rendered, args.players, allow_fewer=args.allow_fewer))
        return (f"sftscope: prompt of {len(rendered.words)} words, {tokens:,} tokens; {n} phrases covering them, "
                f"then {2 ** n:,} masked prompts (+1 for coverage)")
    n = min(args.players, candidates) if args.allow_fewer else args.players
    selection = (f"choosing {n} of {candidates} candidate words by ablation: {candidates + 1:,} forward passes"
                 if args.selection == "ablation" else f"choosing {n} of {candidates} candidate words ({args.selection})")
    hint = ("; --selection first skips the ablation" if args.selection == "ablation" and candidates > 200 else "")
    return (f"sftscope: prompt of {len(rendered.words)} words, {tokens:,} tokens; {selection}, then {2 ** n:,} masked "
            f"prompts{whole}{hint}")


def whole_prompt_line(whole) -> str:
    """How much of the whole prompt the result explains, in one line."""
    r2 = "not computed (--whole-prompt-masks 0)" if whole.masks == 0 else (
        "undefined (the output does not vary)" if whole.r2 != whole.r2 else f"{whole.r2:.3f}")
    return (f"whole prompt: masking the players moves v by {whole.players_effect:+.4f}, masking all {whole.units} "
            f"units of the content by {whole.content_effect:+.4f} (coverage {whole.coverage:.3f}); "
            f"R² of the fit on {whole.masks} random masks over all units: {r2}")


def _result_path(out: str) -> str:
    """Where ``extract --out`` may write: a new file, or an earlier result of sftscope's (never a user's file)."""
    import os  # noqa: PLC0415
    from pathlib import Path  # noqa: PLC0415

    path = Path(os.path.expanduser(out))
    if path.is_dir():
        raise SftscopeError(f"--out {path} is a folder: name a file, e.g. {path / 'interactions.parquet'}")
    if path.is_symlink() or (path.exists() and not _is_our_result(path)):
        raise SftscopeError(f"--out {path} already exists and is not an sftscope result: choose another name "
                            "(sftscope never overwrites your files)")
    if not path.parent.exists():
        raise SftscopeError(f"--out {path}: the folder {path.parent} does not exist")
    if not os.access(path.parent, os.W_OK):
        raise SftscopeError(f"--out {path}: the folder {path.parent} is not writable")
    return str(path)


def _is_our_result(path) -> bool:
    from .interactions import read_metadata  # noqa: PLC0415

    try:
        return bool(read_metadata(path))
    except Exception:  # noqa: BLE001 - anything that is not our Parquet file is not ours
        return False


def _train(args: argparse.Namespace) -> int:
    from .config import TrainConfig, load_config  # noqa: PLC0415
    from .store import is_rank_zero, read_losses  # noqa: PLC0415
    from .train import train  # noqa: PLC0415

    config = load_config(args.config) if args.config else TrainConfig()
    if args.output_dir:
        config.output_dir = args.output_dir
    run = train(config, progress=None if args.quiet else _progress())
    if not is_rank_zero():  # under torchrun/accelerate, rank 0 reports
        return 0
    print(f"run folder: {run}")
    print("step  train_loss  test_loss")
    for row in read_losses(run):
        print(f"{row['step']:4d}  {row.get('train_loss', float('nan')):10.4f}  {row.get('test_loss', float('nan')):9.4f}")
    return 0


def _analyze(args: argparse.Namespace) -> int:
    from .analyze import analyze  # noqa: PLC0415
    from .config import AnalysisSettings  # noqa: PLC0415

    from .config import build  # noqa: PLC0415

    settings = build(AnalysisSettings, {
        "samples_per_split": args.samples, "n_players": args.players, "seed": args.seed, "tau": args.tau,
        "stage_rule": args.stage_rule, "baseline_step": args.baseline_step, "allow_fewer": args.allow_fewer,
        "stop_rule": args.stop_rule,
    }, "analyze options")
    progress = None if args.quiet else _progress()
    say = (lambda _msg: None) if args.quiet else print
    summary = analyze(args.run_dir, settings, baseline_run=args.baseline_run, progress=progress, say=say,
                      ray_address=args.ray, samples_per_job=args.samples_per_job, num_gpus=args.gpus_per_job)
    _print_answer(summary)
    print(f"details in {args.run_dir}/analysis/ (summary.json, dynamics.csv, flows.csv, findings.csv)")
    return 0


def _print_answer(summary: dict) -> None:
    from .headline import headline, pct  # noqa: PLC0415
    from .stopping import benchmark_record  # noqa: PLC0415

    for line in headline(summary, benchmark_record()):
        print(line)
    print("rule                      keeps step  validation acc  test acc     KL  knowledge  compute")
    for name, row in summary["rules"].items():
        if name == "recommended":
            continue
        if row["step"] is None:
            print(f"  {name:<24}does not apply ({row.get('not_applicable')})")
            continue
        kl = "n/a" if row.get("kl") is None else f"{row['kl']:.2f}"
        know = "n/a" if row.get("knowledge_change") is None else f"{100 * row['knowledge_change']:+.1f}"
        print(f"  {name:<24}{row['step']:>9}  {pct(row.get('validation_accuracy')):>14}  {pct(row['accuracy']):>8}"
              f"  {kl:>5}  {know:>9}  {row['compute_fraction']:>7.2f}")
    for row in summary["findings"]:
        reason = f" ({row['reason']})" if row.get("reason") else ""
        print(f"  [{row['verdict']}] {row['finding']}: {row['measured']}{reason}")


def _run(args: argparse.Namespace) -> int:
    from .config import load_run_config  # noqa: PLC0415

    if args.command == "demo":
        from .pipeline import demo_config  # noqa: PLC0415

        config = demo_config(args.out, args.quick)
    else:
        config = load_run_config(args.config)  # before the pipeline's imports: a config error comes at once
    from .pipeline import run  # noqa: PLC0415
    if args.command == "run" and args.output_dir:
        config.output_dir = args.output_dir
    if getattr(args, "dry_run", False):
        from .pipeline import dry_run  # noqa: PLC0415

        print("\n".join(dry_run(config)))
        return 0
    say = (lambda _msg: None) if args.quiet else print
    summary = run(config, progress=None if args.quiet else _progress(), say=say,
                  ray_address=args.ray, samples_per_job=args.samples_per_job, num_gpus=args.gpus_per_job)
    _print_answer(summary)
    print(f"report: {summary['report']}")
    return 0


def _progress():
    from functools import partial  # noqa: PLC0415

    from tqdm.auto import tqdm  # noqa: PLC0415

    return partial(tqdm, leave=False)


def _ray_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ray", nargs="?", const="auto", metavar="ADDRESS",
                        help="fan extraction out over Ray: 'auto' (running cluster), 'local', or an address")
    parser.add_argument("--samples-per-job", type=positive, help="samples per Ray job (default: a checkpoint's all)")
    parser.add_argument("--gpus-per-job", type=non_negative, default=0)


def positive(text: str) -> int:
    """An argparse type: an integer of at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def non_negative(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    from . import __version__  # noqa: PLC0415

    parser = argparse.ArgumentParser(prog="sftscope", description="AND-OR interactions of LLMs along SFT.")
    parser.add_argument("--version", action="version", version=f"sftscope {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress (info level)")
    sub = parser.add_subparsers(dest="command", required=True)

    ex = sub.add_parser("extract", help="interactions of one model on one prompt")
    ex.add_argument("--model", required=True, help="hub id, local folder, or embedded name (smollm2-135m-instruct)")
    ex.add_argument("--prompt", required=True)
    ex.add_argument("--response", required=True, help="reference response; its first token is the target")
    ex.add_argument("--players", type=int, default=10, help="number of words (default 10)")
    ex.add_argument("--selection", choices=["ablation", "first", "random"],
                    help="how word players are chosen (default ablation; not with --players-kind phrases)")
    ex.add_argument("--players-kind", choices=["words", "phrases"], default="words",
                    help="words: the most salient words; phrases: contiguous spans covering every word")
    ex.add_argument("--allow-fewer", action="store_true", help="use all words when fewer than --players")
    ex.add_argument("--whole-prompt-masks", type=int, default=256,
                    help="random masks over all content words for the whole-prompt R² (default 256; 0 skips it)")
    ex.add_argument("--seed", type=int, default=0)
    ex.add_argument("--baseline", choices=["mean", "pad", "zeros"], default="mean")
    ex.add_argument("--noise-bound", type=float, default=0.02, help="lambda of the q bound (default 0.02)")
    ex.add_argument("--tau", type=float, default=0.05, help="salience threshold, relative to the largest effect")
    ex.add_argument("--engine", choices=["auto", "naive", "prefix"], default="auto")
    ex.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="float32")
    ex.add_argument("--device", default="cpu")
    ex.add_argument("--trust-remote-code", action="store_true", help="run model code from the hub (off by default)")
    ex.add_argument("--top", type=positive, default=15, help="rows of the printed table")
    ex.add_argument("--out", help="write every effect to this Parquet file (a new file, or an earlier result)")
    ex.add_argument("--quiet", action="store_true", help="no progress bars")
    ex.set_defaults(func=_extract)

    tr = sub.add_parser("train", help="LoRA SFT with checkpoints dense early (TRL + PEFT)")
    tr.add_argument("config", nargs="?", help="YAML config (defaults: SmolLM2-135M on the shipped emotions data)")
    tr.add_argument("--output-dir", help="run folder (overrides the config's output_dir)")
    tr.add_argument("--quiet", action="store_true", help="no progress bars")
    tr.set_defaults(func=_train)

    an = sub.add_parser("analyze", help="interactions at every checkpoint of a run, dynamics, stopping point")
    an.add_argument("run_dir")
    an.add_argument("--baseline-run", help="run folder of a model of another architecture, same data")
    an.add_argument("--baseline-step", type=int, help="baseline checkpoint (default: its last)")
    defaults = AnalysisSettings()
    an.add_argument("--samples", type=positive, default=defaults.samples_per_split,
                    help=f"probe samples per split (default {defaults.samples_per_split})")
    an.add_argument("--players", type=int, default=defaults.n_players,
                    help=f"words per prompt (default {defaults.n_players})")
    an.add_argument("--seed", type=int, default=defaults.seed, help=f"probe sampling seed (default {defaults.seed})")
    an.add_argument("--tau", type=float, default=defaults.tau,
                    help=f"salience threshold on |I| relative to the largest (default {defaults.tau})")
    an.add_argument("--stage-rule", choices=["cumulative", "crossover"], default=defaults.stage_rule)
    an.add_argument("--stop-rule", default=AnalysisSettings.stop_rule,
                    help=f"the rule that picks the recommended checkpoint (default {AnalysisSettings.stop_rule})")
    an.add_argument("--allow-fewer", action="store_true", help="probe prompts with fewer words use all of them")
    an.add_argument("--quiet", action="store_true", help="no progress bars")
    _ray_options(an)
    an.set_defaults(func=_analyze)

    rn = sub.add_parser("run", help="train target and baseline, analyse, report (each stage resumes)")
    rn.add_argument("config", help="YAML with output_dir, train, baseline, analysis")
    rn.add_argument("--output-dir", help="run folder (overrides the config's output_dir)")
    rn.add_argument("--quiet", action="store_true", help="no progress bars")
    rn.add_argument("--dry-run", action="store_true",
                    help="print what would be trained, extracted and scored, and its cost; load nothing")
    _ray_options(rn)
    rn.set_defaults(func=_run)

    dm = sub.add_parser("demo", help="the whole pipeline on the embedded models and data, offline")
    dm.add_argument("--out", default="sftscope-demo",
                    help="run folder (default sftscope-demo; an earlier demo's folder resumes it)")
    dm.add_argument("--quick", action="store_true", help="a reduced smoke-test version (minutes)")
    dm.add_argument("--quiet", action="store_true", help="no progress bars")
    _ray_options(dm)
    dm.set_defaults(func=_run)
    return parser


PATH_OPTIONS = ("config", "output_dir", "out", "run_dir", "baseline_run", "model")


def main(argv: list[str] | None = None) -> int:
    import os  # noqa: PLC0415

    parser = build_parser()
    args = parser.parse_args(argv)
    for name in PATH_OPTIONS:  # "~/runs/x" means what a shell (and transformers) would make of it
        if isinstance(getattr(args, name, None), str):
            setattr(args, name, os.path.expanduser(getattr(args, name)))
    from .console import closing_note, route_output  # noqa: PLC0415

    route_output(verbose=args.verbose, debug=args.debug)
    try:
        status = args.func(args)
        note = closing_note()
        if note:
            print(f"sftscope: {note}", file=sys.stderr)
        return status
    except SftscopeError as exc:
        if args.debug:
            raise
        print(f"sftscope: error: {one_line(str(exc))}", file=sys.stderr)
        return 2
    except OSError as exc:  # the platform: permissions, a full disk, a file-size limit
        if args.debug:
            raise
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"sftscope: error: {one_line(f'{where}{exc.strerror or exc}')} (finished work is kept; fix this and "
              "run again)", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("sftscope: interrupted; finished work is kept", file=sys.stderr)
        return 130


MAX_ERROR_CHARS = 600


def one_line(message: str) -> str:
    """An error as one line of bounded length: a huge value (a 10 MB key, say) is cut, never echoed whole."""
    message = message.replace("\r", " ").replace("\n", "\\n")
    if len(message) <= MAX_ERROR_CHARS:
        return message
    cut = len(message) - MAX_ERROR_CHARS
    return f"{message[: MAX_ERROR_CHARS // 2]} [... {cut:,} characters cut ...] {message[-MAX_ERROR_CHARS // 2:]}"


if __name__ == "__main__":
    sys.exit(main())
