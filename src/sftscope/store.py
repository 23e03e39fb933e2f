"""The run folder: its layout, atomic writes, the lock and the manifest. The only module that builds its paths.

A run folder (``sftscope train``; the target and the baseline of ``sftscope run``)::

    config.yaml                                  the settings used
    sftscope.log                                 library logs and warnings (the terminal stays quiet)
    checkpoint-<step>/                           LoRA adapter (safetensors); step 0 = before SFT
    losses.csv                                   train and test loss at every checkpoint
    DONE                                         written after the last checkpoint
    analysis/probes.json                         probe samples and their frozen players
    analysis/effects/<model>/step-<step>/<sample>.parquet   one finished unit each
    analysis/<table>.csv, summary.json, manifest.json
    report/<figure>.png, report/index.html

A job folder (``sftscope run``) holds ``target/`` and ``baseline/`` run folders
and copies of the answer, ``summary.json`` and ``report.html``.

Every file is written through a temporary name in the same folder and renamed,
so a reader never sees half a file and an interrupted writer leaves nothing
behind but a ``.*.tmp`` that the next locked run removes.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import pandas as pd

from .errors import SftscopeError

LOCK_NAME = ".sftscope.lock"


# --------------------------------------------------------------------------- layout


@dataclass(frozen=True)
class RunFolder:
    """Paths inside one SFT run's folder (nothing is created by asking for a path)."""

    root: Path

    def __init__(self, root: str | os.PathLike) -> None:
        object.__setattr__(self, "root", Path(root))

    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def losses(self) -> Path:
        return self.root / "losses.csv"

    @property
    def done(self) -> Path:
        return self.root / "DONE"

    @property
    def log(self) -> Path:
        return self.root / "sftscope.log"

    def checkpoint(self, step: int) -> Path:
        """The adapter folder of a step (the name transformers' Trainer gives it)."""
        return self.root / f"checkpoint-{step}"

    def checkpoints(self) -> dict[int, Path]:
        """``{step: folder}`` of the run's adapter checkpoints, in step order."""
        found = {}
        for path in self.root.glob("checkpoint-*"):
            suffix = path.name.split("-", 1)[1]
            if suffix.isdigit() and (path / "adapter_config.json").exists():
                found[int(suffix)] = path
        if not found:
            raise SftscopeError(f"{self.root}: no checkpoints (checkpoint-<step>/adapter_config.json)")
        return dict(sorted(found.items()))

    @property
    def analysis(self) -> Path:
        return self.root / "analysis"

    @property
    def probes(self) -> Path:
        return self.analysis / "probes.json"

    @property
    def effects(self) -> Path:
        return self.analysis / "effects"

    def unit(self, model: str, step: int, sample: str) -> Path:
        """One (model, checkpoint, sample) unit of effects."""
        return self.effects / model / f"step-{step:06d}" / f"{sample}.parquet"

    def units(self) -> list[Path]:
        return sorted(self.effects.glob("*/step-*/*.parquet"))

    def table(self, name: str) -> Path:
        return self.analysis / f"{name}.csv"

    @property
    def summary(self) -> Path:
        return self.analysis / "summary.json"

    @property
    def manifest(self) -> Path:
        return self.analysis / "manifest.json"

    @property
    def report_dir(self) -> Path:
        return self.root / "report"

    def figure(self, name: str) -> Path:
        return self.report_dir / f"{name}.png"

    @property
    def report_page(self) -> Path:
        return self.report_dir / "index.html"


@dataclass(frozen=True)
class JobFolder:
    """``sftscope run``'s folder: the target and baseline run folders and the answer."""

    root: Path

    def __init__(self, root: str | os.PathLike) -> None:
        object.__setattr__(self, "root", Path(root))

    @property
    def target(self) -> RunFolder:
        return RunFolder(self.root / "target")

    @property
    def baseline(self) -> RunFolder:
        return RunFolder(self.root / "baseline")

    @property
    def summary(self) -> Path:
        return self.root / "summary.json"

    @property
    def report(self) -> Path:
        return self.root / "report.html"

    @property
    def log(self) -> Path:
        return self.root / "sftscope.log"


# --------------------------------------------------------------------------- writing


def atomic_write(path: Path, write: Callable[[str], Any]) -> Path:
    """Write through a temporary file in the same folder and rename: never a half file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def write_text(path: Path, text: str) -> Path:
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def write_json(path: Path, data: Any) -> Path:
    return write_text(path, json.dumps(data, indent=1))


def read_json(path: Path) -> Any:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def write_table(path: Path, frame: pd.DataFrame) -> Path:
    return atomic_write(path, lambda tmp: frame.to_csv(tmp, index=False))


def remove_leftovers(folder: Path) -> None:
    """Temporary files of a killed writer (call only while holding the folder's lock)."""
    if folder.exists():
        for leftover in folder.rglob(".*.tmp"):
            leftover.unlink()


# --------------------------------------------------------------------------- losses


def write_losses(path: Path, rows: list[dict[str, float]]) -> None:
    def write(tmp: str) -> None:
        with open(tmp, "w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=["step", "train_loss", "test_loss"])
            writer.writeheader()
            writer.writerows(rows)

    atomic_write(path, write)


def read_losses(run_dir: str | os.PathLike) -> list[dict[str, float]]:
    """The loss table of a run: one row per checkpoint (step, train_loss, test_loss)."""
    path = RunFolder(run_dir).losses
    if not path.exists():
        raise SftscopeError(f"{run_dir}: no losses.csv (not an sftscope run folder?)")
    with path.open(encoding="utf-8") as handle:
        return [{k: (int(v) if k == "step" else float(v)) for k, v in row.items() if v != ""}
                for row in csv.DictReader(handle)]


# --------------------------------------------------------------------------- effect units


def write_unit(path: Path, frame: pd.DataFrame) -> None:
    atomic_write(path, lambda tmp: frame.to_parquet(tmp, index=False))


def load_effects(run_dir: str | os.PathLike) -> pd.DataFrame:
    """Every finished unit as one table (sample, split, step, model, kind, bitmask, words, order, effect)."""
    files = RunFolder(run_dir).units()
    if not files:
        raise SftscopeError(f"{run_dir}: no extracted interactions yet (run sftscope analyze)")
    return pd.concat([pd.read_parquet(f) for f in files], ignore_index=True)


def write_manifest(run_dir: str | os.PathLike) -> dict:
    """``analysis/manifest.json``: the finished units (model, step, sample), from the files themselves."""
    folder = RunFolder(run_dir)
    units = sorted(
        ({"model": p.parts[-3], "step": int(p.parts[-2].split("-")[1]), "sample": p.stem} for p in folder.units()),
        key=lambda u: (u["model"], u["step"], u["sample"]),
    )
    manifest = {"complete_units": units, "count": len(units)}
    write_json(folder.manifest, manifest)
    return manifest


# --------------------------------------------------------------------------- the lock


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextlib.contextmanager
def run_lock(folder: str | os.PathLike):
    """Hold ``folder/.sftscope.lock`` while working; a stale lock (dead pid) is taken over.

    Re-entrant within one process (the pipeline locks, then analysis locks again).
    Under ``accelerate launch``/``torchrun`` only rank 0 holds it: the ranks are one run.
    """
    folder = Path(folder)
    if os.environ.get("RANK", "0") != "0" or os.environ.get("LOCAL_RANK", "0") != "0":
        yield
        return
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_NAME
    mine = str(os.getpid())
    for _ in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            owner = path.read_text(encoding="utf-8").strip() if path.exists() else ""
            if owner == mine:  # re-entered by ourselves
                yield
                return
            if owner.isdigit() and _alive(int(owner)):
                raise SftscopeError(
                    f"{folder} is in use by another sftscope process (pid {owner}); wait for it or remove {path}"
                ) from None
            path.unlink(missing_ok=True)  # stale: its owner died
            continue
        with os.fdopen(fd, "w") as handle:
            handle.write(mine)
        try:
            yield
        finally:
            path.unlink(missing_ok=True)
        return
    raise SftscopeError(f"cannot take the lock {path}")
