"""Extract interactions at every checkpoint of a run, resumably, and summarise the dynamics.

Layout inside the run folder::

    analysis/probes.json                                  probe samples and their frozen players
    analysis/effects/<model>/step-<step>/<sample>.parquet one finished unit each (atomic write)
    analysis/summary.json, analysis/dynamics.csv, analysis/flows.csv, analysis/findings.csv

A unit (model, checkpoint, sample) is done when its Parquet file exists; files
are written through a temporary name and renamed, so an interrupted analysis
resumes without recomputing or duplicating anything.
"""

from __future__ import annotations

import json
import logging
import os
import random
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from .data import Pair
from .dynamics import (
    StageRule, dynamics_table, interval_flows, order_table, stage_boundary, summarize, type_utility,
)
from .errors import SftscopeError
from .interactions import atomic_write
from .lock import run_lock
from .players import Players

log = logging.getLogger(__name__)


@dataclass
class AnalysisSettings:
    samples_per_split: int = 6
    n_players: int = 8
    seed: int = 0
    tau: float = 0.05
    salience: str = "relative"
    noise_bound: float = 0.02
    baseline: str = "mean"
    engine: str = "auto"
    stage_rule: str = "cumulative"
    stage_fraction: float = 0.9
    baseline_step: int | None = None
    batch_samples: int = 1  # samples sharing each forward pass of the prefix engine: 4-8 on a GPU, 1 on CPU


@dataclass
class Probe:
    sample: str
    split: str
    prompt: str
    response: str
    players: Players


# --------------------------------------------------------------------------- storage


def analysis_dir(run_dir: str | os.PathLike) -> Path:
    path = Path(run_dir) / "analysis"
    path.mkdir(parents=True, exist_ok=True)
    return path


def unit_path(run_dir, model: str, step: int, sample: str) -> Path:
    return analysis_dir(run_dir) / "effects" / model / f"step-{step:06d}" / f"{sample}.parquet"


def write_unit(path: Path, frame: pd.DataFrame) -> None:
    atomic_write(path, lambda tmp: frame.to_parquet(tmp, index=False))


def load_effects(run_dir: str | os.PathLike) -> pd.DataFrame:
    """Every finished unit as one table (sample, split, step, model, kind, bitmask, words, order, effect)."""
    files = sorted((analysis_dir(run_dir) / "effects").glob("*/step-*/*.parquet"))
    if not files:
        raise SftscopeError(f"{run_dir}: no extracted interactions yet (run sftscope analyze)")
    return pd.concat([pd.read_parquet(f) for f in files], ignore_index=True)


def save_probes(path: Path, probes: list[Probe]) -> None:
    data = [{**asdict(p), "players": asdict(p.players)} for p in probes]
    atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(data, indent=1), encoding="utf-8"))


def load_probes(path: Path) -> list[Probe]:
    out = []
    for item in json.loads(path.read_text(encoding="utf-8")):
        players = Players(**{k: tuple(tuple(x) if isinstance(x, list) else x for x in v) for k, v in item["players"].items()})
        out.append(Probe(item["sample"], item["split"], item["prompt"], item["response"], players))
    return out


# --------------------------------------------------------------------------- probes


def draw_probes(train: list[Pair], test: list[Pair], count: int, seed: int) -> list[tuple[str, str, Pair]]:
    """``count`` seeded samples from each split: (sample id, split, pair)."""
    rng = random.Random(seed)
    chosen = []
    for split, pairs in (("train", train), ("test", test)):
        for index in sorted(rng.sample(range(len(pairs)), min(count, len(pairs)))):
            chosen.append((f"{split}-{index:04d}", split, pairs[index]))
    return chosen


# --------------------------------------------------------------------------- extraction


@dataclass(frozen=True)
class Job:
    """One unit of distributable work: a model's checkpoint and a batch of probe samples."""

    model_label: str
    model_name: str
    step: int
    checkpoint: str
    samples: tuple[str, ...]


def plan_jobs(
    run_dir, *, model_label: str, model_name: str, checkpoints: dict[int, Path], probes: list[Probe],
    samples_per_job: int | None = None, batch_samples: int = 1,
) -> list[Job]:
    """Jobs for every checkpoint with missing units; ``samples_per_job=None`` puts a checkpoint's all in one.

    Samples go in fixed batches of ``batch_samples`` (in probe order) that are
    never split across jobs: a batch is always evaluated whole, so its values
    are bit-for-bit the same however the work is cut or resumed.
    """
    if batch_samples < 1:
        raise SftscopeError(f"analysis.batch_samples must be >= 1, got {batch_samples}")
    order = [p.sample for p in probes]
    batches = [tuple(order[k : k + batch_samples]) for k in range(0, len(order), batch_samples)]
    jobs = []
    for step, path in checkpoints.items():
        pending = [b for b in batches if any(not unit_path(run_dir, model_label, step, s).exists() for s in b)]
        per_job = max(1, -(-(samples_per_job or len(order)) // batch_samples))  # whole batches per job
        for k in range(0, len(pending), per_job):
            samples = tuple(s for b in pending[k : k + per_job] for s in b)
            jobs.append(Job(model_label, model_name, step, str(path), samples))
    return jobs


def run_job(
    run_dir, job: Job, probes: dict[str, Probe], settings: AnalysisSettings, *, base_model=None, tokenizer=None,
    on_unit: Callable[[], None] | None = None,
) -> int:
    """Load the job's checkpoint once, extract its batches, write each missing unit itself; returns units written."""
    from .extract import Request, extract_many  # noqa: PLC0415
    from .models import load_model_and_tokenizer  # noqa: PLC0415
    from .train import load_checkpoint  # noqa: PLC0415

    if base_model is None:
        base_model, tokenizer = load_model_and_tokenizer(job.model_name, dtype="float32")
    model = load_checkpoint(base_model, job.checkpoint)
    written = 0
    for k in range(0, len(job.samples), settings.batch_samples):
        batch = job.samples[k : k + settings.batch_samples]
        targets = {s: unit_path(run_dir, job.model_label, job.step, s) for s in batch}
        missing = {s for s, t in targets.items() if not t.exists()}  # a retried job skips finished batches
        if missing:  # the whole batch is evaluated, so its values do not depend on what was done before
            requests = [
                Request(probes[s].prompt, probes[s].response, probes[s].players,
                        context=f"sample {s}, {job.model_label} step {job.step}")
                for s in batch
            ]
            results = extract_many(
                model, tokenizer, requests, baseline=settings.baseline, noise_bound=settings.noise_bound,
                tau=settings.tau, engine=settings.engine, batch_samples=settings.batch_samples,
            )
            for sample, result in zip(batch, results):
                if sample in missing:
                    frame = result.to_dataframe().assign(
                        sample=sample, split=probes[sample].split, step=job.step, model=job.model_label
                    )
                    write_unit(targets[sample], frame)
                    written += 1
        if on_unit:
            for _ in batch:
                on_unit()
    return written


def extract_run(
    run_dir: str | os.PathLike,
    *,
    model_label: str,
    model_name: str,
    base_model,
    tokenizer,
    checkpoints: dict[int, Path],
    probes: list[Probe],
    settings: AnalysisSettings,
    progress: Callable | None = None,
) -> int:
    """Extract every missing unit of one model in this process; returns how many were computed."""
    jobs = plan_jobs(
        run_dir, model_label=model_label, model_name=model_name, checkpoints=checkpoints, probes=probes,
        batch_samples=settings.batch_samples,
    )
    by_id = {p.sample: p for p in probes}
    bar = progress(total=sum(len(j.samples) for j in jobs), desc=f"extract {model_label}") if progress and jobs else None
    computed = sum(
        run_job(run_dir, job, by_id, settings, base_model=base_model, tokenizer=tokenizer,
                on_unit=bar.update if bar else None)
        for job in jobs
    )
    if bar:
        bar.close()
    return computed


# --------------------------------------------------------------------------- summary


def final_types(effects: pd.DataFrame, boundary: int, settings: AnalysisSettings) -> dict:
    """Per (split, sample): the types at the last checkpoint, emerged split at the boundary.

    Early-emerged = emerged by the boundary and still emerged at the end; late = the rest.
    """
    from .dynamics import complete_omegas, encoded, omegas_by_sample, sample_types  # noqa: PLC0415

    target = effects[effects["model"] == "target"]
    steps = sorted(int(s) for s in target["step"].unique())
    omegas = omegas_by_sample(encoded(target, tau=settings.tau, mode=settings.salience))
    complete_omegas(omegas, steps)
    out = {}
    for key, per_step in omegas.items():
        seq = {t.step: t for t in sample_types(per_step)}
        final, at_boundary = seq[steps[-1]], seq[max(s for s in seq if s <= boundary)]
        out[key] = {
            "preserved": final.preserved,
            "removed": final.removed,
            "early_emerged": {k: v for k, v in final.emerged.items() if k in at_boundary.emerged},
            "late_emerged": {k: v for k, v in final.emerged.items() if k not in at_boundary.emerged},
        }
    return out


def utilities(effects: pd.DataFrame, types: dict, settings: AnalysisSettings) -> dict:
    """Eq. 11 on test samples: cross-entropy of the target from each type alone, at the last checkpoint.

    Removed interactions are scored with the pre-SFT bias (their effects are from t_0).
    """
    target = effects[effects["model"] == "target"]
    steps = sorted(target["step"].unique())
    bias = target[(target["order"] == 0) & (target["step"] == steps[-1])].groupby("sample")["effect"].sum()
    bias0 = target[(target["order"] == 0) & (target["step"] == steps[0])].groupby("sample")["effect"].sum()
    losses = {name: [] for name in ("preserved", "removed", "early_emerged", "late_emerged")}
    for (split, sample), sets in types.items():
        if split == "test":
            for name in losses:
                losses[name].append(type_utility((bias0 if name == "removed" else bias)[sample], sets[name]))
    return {k: float(np.mean(v)) if v else float("nan") for k, v in losses.items()}


def early_late_quality(effects: pd.DataFrame, types: dict, settings: AnalysisSettings) -> dict:
    """Mean r_gen (vs the baseline model at its checkpoint) and rho of early- and late-emerged sets."""
    from .dynamics import _baseline_sets, encoded, generalizability, uncancelled_ratio  # noqa: PLC0415

    has_baseline = (effects["model"] == "baseline").any()
    base = _baseline_sets(effects, encoded(effects, tau=settings.tau, mode=settings.salience),
                          "baseline" if has_baseline else None, settings.baseline_step)
    out = {}
    for name in ("early_emerged", "late_emerged"):
        sets = [(key, s[name]) for key, s in types.items() if s[name]]
        gens = [generalizability(inter, base.get(key, {}))[0] for key, inter in sets] if has_baseline else []
        out[name] = {
            "r_gen": float(np.mean(gens)) if gens else float("nan"),
            "rho": float(np.mean([uncancelled_ratio(list(inter.values())) for _, inter in sets])) if sets else float("nan"),
        }
    return out


def findings(summary_table: pd.DataFrame, flows: pd.DataFrame, boundary: int, last: int, emerged: dict) -> pd.DataFrame:
    """The paper's five findings, measured on this run (mean over all probe samples)."""
    def at(step, type_, column):
        rows = summary_table[(summary_table["step"] == step) & (summary_table["type"] == type_)]
        return float(rows[column].mean()) if len(rows) else float("nan")

    first = flows[flows["step"] <= boundary]
    second = flows[flows["step"] > boundary]
    em1, em2 = int(first["emerged"].sum()), int(second["emerged"].sum())
    rm1, rm2 = int(first["removed"].sum()), int(second["removed"].sum())
    early_gen, late_gen = emerged["early_emerged"]["r_gen"], emerged["late_emerged"]["r_gen"]
    early_rho, late_rho = emerged["early_emerged"]["rho"], emerged["late_emerged"]["rho"]
    rem = {c: at(last, "removed", c) for c in ("mean_order", "r_gen", "rho")}
    pre = {c: at(last, "preserved", c) for c in ("mean_order", "r_gen", "rho", "count")}
    emg = {c: at(last, "emerged", c) for c in ("mean_order", "r_gen", "rho", "count")}
    rows = [
        ("1 few emerge in stage 1, many in stage 2", f"emerged: stage 1 {em1}, stage 2 {em2}", em1 < em2),
        ("2 early-emerged more generalizable, less cancelling",
         f"r_gen early {early_gen:.2f} vs late {late_gen:.2f}; rho early {early_rho:.2f} vs late {late_rho:.2f}",
         bool(early_gen > late_gen and early_rho > late_rho)),
        ("3 removals happen mostly in stage 1", f"removed: stage 1 {rm1}, stage 2 {rm2}", rm1 > rm2),
        ("4 removed are high-order, non-generalizable, cancelling",
         f"order {rem['mean_order']:.2f} (preserved {pre['mean_order']:.2f}); r_gen {rem['r_gen']:.2f}; rho {rem['rho']:.2f}",
         bool(rem["mean_order"] > pre["mean_order"] and rem["r_gen"] < pre["r_gen"] and rem["rho"] < pre["rho"])),
        ("5 preserved are few, low-order, generalizable, weakly cancelling",
         f"count {pre['count']:.1f} vs emerged {emg['count']:.1f}; order {pre['mean_order']:.2f} vs {emg['mean_order']:.2f}; "
         f"r_gen {pre['r_gen']:.2f} vs {emg['r_gen']:.2f}; rho {pre['rho']:.2f} vs {emg['rho']:.2f}",
         bool(pre["count"] < emg["count"] and pre["mean_order"] < emg["mean_order"]
              and pre["r_gen"] > emg["r_gen"] and pre["rho"] > emg["rho"])),
    ]
    return pd.DataFrame(rows, columns=["finding", "measured", "holds"])


def summarize_run(run_dir: str | os.PathLike, settings: AnalysisSettings) -> dict:
    """Dynamics, stage boundary, recommendation and findings from the stored effects."""
    from .train import read_losses  # noqa: PLC0415

    effects = load_effects(run_dir)
    target = effects[effects["model"] == "target"]
    has_baseline = (effects["model"] == "baseline").any()
    per_sample = dynamics_table(
        effects, tau=settings.tau, mode=settings.salience,
        baseline_model="baseline" if has_baseline else None, baseline_step=settings.baseline_step,
    )
    table = summarize(per_sample)
    flows = interval_flows(target, tau=settings.tau, mode=settings.salience)
    boundary = stage_boundary(flows, StageRule(settings.stage_rule, settings.stage_fraction))
    by_rule = {
        "cumulative": stage_boundary(flows, StageRule("cumulative", settings.stage_fraction)),
        "crossover": stage_boundary(flows, StageRule("crossover")),
    }
    steps = sorted(int(s) for s in target["step"].unique())
    losses = pd.DataFrame(read_losses(run_dir))
    gap = losses.assign(gap=losses["test_loss"] - losses["train_loss"]).set_index("step")["gap"]
    emerged_total = table[table["type"] == "emerged"].groupby("step")["count"].mean()
    common = [s for s in emerged_total.index if s in gap.index]
    corr = float(np.corrcoef(emerged_total[common], gap[common])[0, 1]) if len(common) > 2 else float("nan")
    types = final_types(effects, boundary, settings)
    emerged = early_late_quality(effects, types, settings)
    found = findings(table, flows, boundary, steps[-1], emerged)
    out = analysis_dir(run_dir)
    orders = order_table(target, tau=settings.tau, mode=settings.salience)
    for name, frame in (("dynamics", table), ("flows", flows), ("findings", found), ("per_sample", per_sample),
                        ("orders", orders)):
        atomic_write(out / f"{name}.csv", lambda tmp, f=frame: f.to_csv(tmp, index=False))
    summary = {
        "recommended_step": boundary,
        "stage_boundary_step": boundary,
        "stage_boundary_by_rule": by_rule,
        "min_test_loss_step": int(losses.loc[losses["test_loss"].idxmin(), "step"]),
        "loss_gap": {int(k): float(v) for k, v in gap.items()},
        "corr_emerged_vs_loss_gap": corr,
        "utility_cross_entropy": utilities(effects, types, settings),
        "early_late_emerged": emerged,
        "findings": found.to_dict("records"),
        "checkpoints": steps,
        "settings": asdict(settings),
    }
    atomic_write(out / "summary.json", lambda tmp: Path(tmp).write_text(json.dumps(summary, indent=1), encoding="utf-8"))
    write_manifest(run_dir)
    return summary


def write_manifest(run_dir) -> dict:
    """``analysis/manifest.json``: the finished units (model, step, sample), from the files themselves."""
    root = analysis_dir(run_dir) / "effects"
    units = sorted(
        ({"model": p.parts[-3], "step": int(p.parts[-2].split("-")[1]), "sample": p.stem}
         for p in root.glob("*/step-*/*.parquet")),
        key=lambda u: (u["model"], u["step"], u["sample"]),
    )
    manifest = {"complete_units": units, "count": len(units)}
    text = json.dumps(manifest, indent=1)
    atomic_write(analysis_dir(run_dir) / "manifest.json", lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
    return manifest


def analyze(
    run_dir: str | os.PathLike,
    settings: AnalysisSettings | None = None,
    *,
    baseline_run: str | os.PathLike | None = None,
    progress: Callable | None = None,
    ray_address: str | None = None,
    samples_per_job: int | None = None,
    num_gpus: float = 0,
) -> dict:
    """Probe samples, frozen players, extraction at every checkpoint (resumable), then the summary.

    ``ray_address`` fans the extraction jobs out over a Ray cluster (``"local"``
    starts one on this machine; ``"auto"`` joins a running one); each job is one
    checkpoint and up to ``samples_per_job`` samples, with ``num_gpus`` each.
    """
    from .train import load_config  # noqa: PLC0415

    settings = settings or AnalysisSettings()
    run_dir = Path(run_dir).resolve()
    config = load_config(run_dir / "config.yaml")
    with run_lock(run_dir):
        return _analyze_locked(
            run_dir, config, settings, baseline_run, progress,
            ray=(ray_address, samples_per_job, num_gpus),
        )


def _model_ref(name: str, relative_to: Path) -> str:
    """Absolute path for local model folders (workers may run elsewhere), names unchanged."""
    path = Path(name)
    if not path.is_absolute() and (relative_to / path).exists():
        return str((relative_to / path).resolve())
    return str(path.resolve()) if path.exists() else name


def _analyze_locked(run_dir: Path, config, settings: AnalysisSettings, baseline_run, progress, ray) -> dict:
    from .extract import select_players  # noqa: PLC0415
    from .models import load_model_and_tokenizer  # noqa: PLC0415
    from .train import checkpoint_dirs, load_config, split_pairs  # noqa: PLC0415

    for leftover in analysis_dir(run_dir).rglob(".*.tmp"):  # a killed writer's temp file; we hold the lock
        leftover.unlink()
    base, tokenizer = load_model_and_tokenizer(config.model, dtype="float32")
    probes_file = analysis_dir(run_dir) / "probes.json"
    if probes_file.exists():
        probes = load_probes(probes_file)
    else:  # players are chosen once, on the model before SFT, and frozen
        train, test = split_pairs(config)
        probes = []
        for sample, split, pair in draw_probes(train, test, settings.samples_per_split, settings.seed):
            players = select_players(base, tokenizer, pair.prompt, pair.response, settings.n_players, allow_fewer=True)
            probes.append(Probe(sample, split, pair.prompt, pair.response, players))
        save_probes(probes_file, probes)
    units = [("target", _model_ref(config.model, Path.cwd()), checkpoint_dirs(run_dir))]
    if baseline_run is not None:
        base_config = load_config(Path(baseline_run) / "config.yaml")
        ckpts = checkpoint_dirs(baseline_run)
        step = max(ckpts) if settings.baseline_step is None else settings.baseline_step
        if step not in ckpts:
            raise SftscopeError(f"{baseline_run}: no checkpoint at step {step}")
        units.append(("baseline", _model_ref(base_config.model, Path.cwd()), {step: ckpts[step]}))
    ray_address, samples_per_job, num_gpus = ray
    if ray_address is not None:
        from .distributed import extract_with_ray  # noqa: PLC0415

        extract_with_ray(run_dir, units, probes, settings, address=ray_address,
                         samples_per_job=samples_per_job, num_gpus=num_gpus, progress=progress)
    else:
        for label, name, checkpoints in units:
            model, tok = (base, tokenizer) if label == "target" else load_model_and_tokenizer(name, dtype="float32")
            extract_run(run_dir, model_label=label, model_name=name, base_model=model, tokenizer=tok,
                        checkpoints=checkpoints, probes=probes, settings=settings, progress=progress)
    return summarize_run(run_dir, settings)
