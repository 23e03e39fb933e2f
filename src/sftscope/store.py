"""The run folder: its layout, atomic writes, the lock and the manifest. The only module that builds its paths.

A run folder (``sftscope train``; the target and the baseline of ``sftscope run``)::

    sftscope-run.json                            marks the folder as sftscope's (it writes nowhere else)
    sftscope-config.yaml                         the settings used
    sftscope.log                                 library logs and warnings (the terminal stays quiet)
    checkpoint-<step>/                           LoRA adapter (safetensors); step 0 = before SFT
    losses.csv                                   train and validation loss at every checkpoint
    DONE                                         written by ``sftscope run`` once training finished
    analysis/probes.json                         probe samples and their frozen players
    analysis/effects/<model>/step-<step>/<sample>.parquet   one finished unit each
    analysis/quality/<model>/<split>/step-<step>.json   task quality of a checkpoint on validation and test
    analysis/drift/<model>/step-<step>.json      general-capability drift of a checkpoint; base-answers.json
    analysis/<table>.csv, summary.json, manifest.json
    report/<figure>.png, report/index.html

A job folder (``sftscope run``) holds its marker, ``target/`` and ``baseline/``
run folders, ``sftscope.log`` and copies of the answer, ``summary.json`` and
``report.html``.

sftscope writes only into folders that are new, empty or marked as its own
(:func:`claim`); inside them it writes and removes only the names of this
layout, never a file it did not write.

Every file is written through a temporary name in the same folder and renamed,
so a reader never sees half a file and an interrupted writer leaves nothing
behind but a ``.*.tmp`` (under ``analysis/`` the next analysis removes it).
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import json
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import pandas as pd

from .errors import SftscopeError

LOCK_NAME = ".sftscope.lock"
MARKER = "sftscope-run.json"
# What transformers' Trainer and PEFT write into a checkpoint folder (a retrain removes these, nothing else).
CHECKPOINT_FILES = frozenset({
    "README.md", "adapter_config.json", "adapter_model.safetensors", "chat_template.jinja", "tokenizer.json",
    "tokenizer_config.json", "trainer_state.json", "training_args.bin", "special_tokens_map.json", "vocab.json",
    "merges.txt", "tokenizer.model", "added_tokens.json", "generation_config.json", "optimizer.pt", "scheduler.pt",
    "scaler.pt", "rng_state.pth",
})


# --------------------------------------------------------------------------- layout


@dataclass(frozen=True)
class RunFolder:
    """Paths inside one SFT run's folder (nothing is created by asking for a path)."""

    root: Path

    def __init__(self, root: str | os.PathLike) -> None:
        object.__setattr__(self, "root", Path(root))

    @property
    def config(self) -> Path:
        """The settings the run was trained with (``config.yaml`` in folders of sftscope 0.1)."""
        current = self.root / "sftscope-config.yaml"
        legacy = self.root / "config.yaml"
        return legacy if not current.exists() and legacy.exists() and self.losses.exists() else current

    @property
    def losses(self) -> Path:
        return self.root / "losses.csv"

    @property
    def done(self) -> Path:
        return self.root / "DONE"

    @property
    def log(self) -> Path:
        return self.root / "sftscope.log"

    def is_run(self) -> bool:
        """Marked as an sftscope run folder, or laid out as one by an earlier version (losses and checkpoint 0)."""
        return _marked(self.root, "run") or (self.losses.exists() and (self.checkpoint(0) / "adapter_config.json").exists())

    def clear_training(self) -> None:
        """Remove what a previous training wrote (checkpoints, losses, marker of completion); nothing else."""
        for path in (self.losses, self.done, self.root / "sftscope-config.yaml"):
            path.unlink(missing_ok=True)
        for folder in self.root.glob("checkpoint-*"):
            if folder.is_dir() and folder.name.split("-", 1)[1].isdigit():
                for item in folder.iterdir():
                    if item.is_file() and (item.name in CHECKPOINT_FILES or item.name.startswith("rng_state_")):
                        item.unlink()
                if not any(folder.iterdir()):
                    folder.rmdir()

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

    def quality_unit(self, model: str, step: int, split: str = "test") -> Path:
        """Task quality of one checkpoint on a whole split (test: what the report shows; validation: what rules see)."""
        return self.analysis / "quality" / model / split / f"step-{step:06d}.json"

    def drift_unit(self, model: str, step: int) -> Path:
        """General-capability drift of one checkpoint against the base model."""
        return self.analysis / "drift" / model / f"step-{step:06d}.json"

    @property
    def drift_reference(self) -> Path:
        """The base model's greedy answers to the general prompts (generated once per run)."""
        return self.analysis / "drift" / "base-answers.json"

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


# --------------------------------------------------------------------------- whose folder


def _marked(folder: Path, kind: str) -> bool:
    try:
        return read_json(folder / MARKER).get("kind") == kind
    except (OSError, ValueError, AttributeError):
        return False


def _legacy_job(folder: Path) -> bool:
    """A job folder of sftscope 0.1: a target run folder and nothing it would not have written."""
    names = {p.name for p in folder.iterdir()}
    return RunFolder(folder / "target").is_run() and names <= {
        "target", "baseline", "summary.json", "report.html", "sftscope.log", LOCK_NAME}


LAYOUT_NAMES = frozenset({MARKER, LOCK_NAME, "sftscope-config.yaml", "config.yaml", "sftscope.log", "losses.csv", "DONE",
                          "analysis", "report", "target", "baseline", "summary.json", "report.html"})


def _layout_entries(folder: Path):
    """The entries of ``folder`` that sftscope writes into or removes (its layout's names, checkpoint-*)."""
    if not folder.is_dir():
        return
    for entry in folder.iterdir():
        if entry.name in LAYOUT_NAMES or entry.name.startswith("checkpoint-"):
            yield entry


def refuse_links(folder: str | os.PathLike) -> None:
    """No name sftscope writes through may be a link: writing or clearing it would touch what the link points to.

    Checked at every level of the layout (a run folder, a job folder's target
    and baseline, a checkpoint's files, analysis/ and report/ below). The
    folder itself may be a link (an output folder on another disk).
    """
    stack = [Path(folder)]
    while stack:
        current = stack.pop()
        for entry in _layout_entries(current):
            if entry.is_symlink():
                raise SftscopeError(f"{entry} is a link to {os.readlink(entry)}: sftscope does not write through links "
                                    "(it could overwrite what the link points to); remove the link or use a new "
                                    "output folder")
            if entry.is_dir():
                if entry.name in ("target", "baseline"):
                    stack.append(entry)
                else:
                    for root, dirs, files in os.walk(entry):
                        for name in dirs + files:
                            inner = Path(root) / name
                            if inner.is_symlink():
                                raise SftscopeError(f"{inner} is a link to {os.readlink(inner)}: sftscope does not "
                                                    "write through links; remove the link or use a new output folder")


def claim(folder: str | os.PathLike, kind: str) -> Path:
    """Make ``folder`` sftscope's: it must be new, empty, or already its own (``kind``: "job" or "run").

    Anything else is refused with one line before any work, so a user's files
    are never overwritten or removed.
    """
    folder = Path(os.path.expanduser(str(folder)))
    if not is_rank_zero():
        return folder  # under torchrun/accelerate, rank 0 claims
    if folder.exists() and not folder.is_dir():
        raise SftscopeError(f"{folder} is a file, not a folder: choose another output folder")
    if folder.is_dir() and not (folder / MARKER).exists():
        owned = RunFolder(folder).is_run() if kind == "run" else _legacy_job(folder)
        others = sorted(p.name for p in folder.iterdir())
        if others and not owned:
            shown = ", ".join(others[:3]) + (", ..." if len(others) > 3 else "")
            raise SftscopeError(f"{folder} already holds files sftscope did not write ({shown}): "
                                "use a new or empty folder")
    elif folder.is_dir() and not _marked(folder, kind):
        raise SftscopeError(f"{folder} is an sftscope folder of another kind (not a {kind} folder): "
                            "use a new or empty folder")
    refuse_links(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if not (folder / MARKER).exists():
        write_json(folder / MARKER, {"tool": "sftscope", "kind": kind})
    return folder


# --------------------------------------------------------------------------- writing


def is_rank_zero() -> bool:
    """True outside multi-process training, and on its rank 0 (torchrun and accelerate set RANK, LOCAL_RANK)."""
    return os.environ.get("RANK", "0") == "0" and os.environ.get("LOCAL_RANK", "0") == "0"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


UMASK = _umask()


def atomic_write(path: Path, write: Callable[[str], Any]) -> Path:
    """Write through a temporary file in the same folder and rename: never a half file.

    The file gets the user's usual permissions (``0666`` less the umask). A
    write that fails (read-only folder, full disk) raises one line naming the
    file; the previous version of the file, if any, is left as it was.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise SftscopeError(f"cannot write {path}: {exc.strerror or exc} (check the folder's permissions and free "
                            "space)") from exc
    os.close(fd)
    try:
        try:
            write(tmp)
            os.chmod(tmp, 0o666 & ~UMASK)
            os.replace(tmp, path)
        except OSError as exc:
            raise SftscopeError(f"cannot write {path}: {exc.strerror or exc} (free space or raise the file-size "
                                "limit; finished results are kept and a rerun resumes)") from exc
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def apply_umask(folder: Path) -> None:
    """Give the files of ``folder`` the user's usual permissions (safetensors writes 0600 through a temp file)."""
    for item in Path(folder).iterdir():
        if item.is_file() and not item.is_symlink():
            os.chmod(item, 0o666 & ~UMASK)


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


# --------------------------------------------------------------------------- what a result was computed from


def digest(inputs: Any) -> str:
    """A short, stable hash of JSON-able inputs."""
    return hashlib.sha256(json.dumps(inputs, sort_keys=True, default=str).encode()).hexdigest()[:16]


def checkpoint_digest(folder: str | os.PathLike) -> str:
    """Hash of a checkpoint's adapter weights and config: changes when the checkpoint is retrained."""
    folder = Path(folder)
    sha = hashlib.sha256()
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        path = folder / name
        if not path.exists():
            raise SftscopeError(f"{folder}: no {name} (an incomplete checkpoint: delete it and train again)")
        with path.open("rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                sha.update(chunk)
    return sha.hexdigest()[:16]


def changed_keys(stored: dict | None, wanted: dict) -> list[str]:
    """The input names whose values differ (all of them when nothing was stored)."""
    if not isinstance(stored, dict):
        return sorted(wanted)
    return sorted(k for k in set(stored) | set(wanted) if stored.get(k) != wanted.get(k))


# --------------------------------------------------------------------------- losses


LOSS_COLUMNS = ["step", "train_loss", "validation_loss"]  # runs of sftscope 0.2 had test_loss instead


def write_losses(path: Path, rows: list[dict[str, float]]) -> None:
    def write(tmp: str) -> None:
        with open(tmp, "w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=LOSS_COLUMNS)
            writer.writeheader()
            writer.writerows(rows)

    atomic_write(path, write)


def read_losses(run_dir: str | os.PathLike) -> list[dict[str, float]]:
    """The loss table of a run: one row per checkpoint (step, train_loss, validation_loss)."""
    path = RunFolder(run_dir).losses
    if not path.exists():
        raise SftscopeError(f"{run_dir}: no losses.csv (not an sftscope run folder?)")
    with path.open(encoding="utf-8") as handle:
        return [{k: (int(v) if k == "step" else float(v)) for k, v in row.items() if v != ""}
                for row in csv.DictReader(handle)]


# --------------------------------------------------------------------------- effect units


INPUTS_KEY = b"sftscope_inputs"


def write_unit(path: Path, frame: pd.DataFrame, inputs: dict | None = None) -> None:
    """One unit's effects as Parquet; ``inputs`` (what it was computed from) travel in the file's schema."""
    import pyarrow as pa  # noqa: PLC0415
    import pyarrow.parquet as pq  # noqa: PLC0415

    table = pa.Table.from_pandas(frame, preserve_index=False)
    if inputs is not None:
        table = table.replace_schema_metadata({**(table.schema.metadata or {}), INPUTS_KEY: json.dumps(inputs).encode()})
    atomic_write(path, lambda tmp: pq.write_table(table, tmp))


def unit_inputs(path: Path) -> dict | None:
    """The inputs stored with a unit; ``None`` for a unit that cannot be read (it is then recomputed)."""
    import pyarrow.parquet as pq  # noqa: PLC0415

    try:
        meta = pq.read_schema(path).metadata or {}
        return json.loads(meta[INPUTS_KEY]) if INPUTS_KEY in meta else {}
    except (OSError, ValueError, KeyError):  # truncated or not Parquet at all
        return None


def load_effects(run_dir: str | os.PathLike, units: list[Path] | None = None) -> pd.DataFrame:
    """Finished units as one table (sample, split, step, model, kind, bitmask, words, order, effect).

    ``units``: these files only (the analysis passes the units of its current probes
    and checkpoints); default every unit in the folder.
    """
    files = RunFolder(run_dir).units() if units is None else units
    if not files:
        raise SftscopeError(f"{run_dir}: no extracted interactions yet (run sftscope analyze)")
    frames = [pd.read_parquet(f) for f in files]
    # older units stored a salience flag under the tau of their day; the analysis recomputes salience from effects
    return pd.concat([f.drop(columns="salient", errors="ignore") for f in frames], ignore_index=True)


def write_manifest(run_dir: str | os.PathLike, units: list[Path] | None = None) -> dict:
    """``analysis/manifest.json``: the finished units (model, step, sample) the summary was computed from."""
    folder = RunFolder(run_dir)
    files = folder.units() if units is None else [Path(u) for u in units]
    units = sorted(
        ({"model": p.parts[-3], "step": int(p.parts[-2].split("-")[1]), "sample": p.stem} for p in files),
        key=lambda u: (u["model"], u["step"], u["sample"]),
    )
    manifest = {"complete_units": units, "count": len(units)}
    write_json(folder.manifest, manifest)
    return manifest


# --------------------------------------------------------------------------- the lock


def _process_start(pid: int) -> str | None:
    """When a process started (clock ticks since boot, from /proc), to tell a reused pid from its first owner."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]  # field 22 of proc(5), counted after the command name


def _command(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return None


def _looks_like_sftscope(pid: int) -> bool:
    """Whether a live process could be sftscope (python or the sftscope script); True where /proc cannot say."""
    command = _command(pid)
    return command is None or "python" in command or "sftscope" in command


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _owner(text: str) -> tuple[int | None, str | None]:
    """The pid and start time a lock file names ("pid start", or a bare pid from earlier versions)."""
    parts = text.split()
    if not parts or not parts[0].isdigit():
        return None, None
    return int(parts[0]), (parts[1] if len(parts) > 1 else None)


def _held(pid: int, started: str | None) -> bool:
    """Whether the process that wrote the lock still runs."""
    if not _alive(pid):
        return False
    now = _process_start(pid)
    if started is not None and now is not None:
        return now == started  # the same pid, reused by another process, does not hold the lock
    return _looks_like_sftscope(pid)


LOCK_GRACE_S = 10.0  # an empty lock file younger than this belongs to a process that is writing its pid


def _age_seconds(path: Path) -> float:
    try:
        return time.time() - path.stat().st_mtime
    except FileNotFoundError:
        return float("inf")


@contextlib.contextmanager
def run_lock(folder: str | os.PathLike):
    """Hold ``folder/.sftscope.lock`` while working; a stale lock (its process is gone) is taken over.

    The lock names the holder's pid and start time, so a pid reused by another
    process is not mistaken for the holder. Re-entrant within one process (the
    pipeline locks, then analysis locks again). Under ``accelerate
    launch``/``torchrun`` only rank 0 holds it: the ranks are one run.
    """
    folder = Path(folder)
    if not is_rank_zero():
        yield
        return
    path = folder / LOCK_NAME
    mine = f"{os.getpid()} {_process_start(os.getpid()) or ''}".strip()
    for _ in range(2):
        try:
            folder.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)  # the umask applies
        except FileExistsError:
            owner = path.read_text(encoding="utf-8").strip() if path.exists() else ""
            pid, started = _owner(owner)
            if pid == os.getpid():  # re-entered by ourselves
                yield
                return
            if not owner and _age_seconds(path) < LOCK_GRACE_S:  # just created: its owner is writing its pid
                raise SftscopeError(f"{folder} is being taken by another sftscope process; wait for it or remove {path}")
            if pid is not None and _held(pid, started):
                command = _command(pid)
                shown = f": {command[:80]}" if command else ""
                raise SftscopeError(
                    f"{folder} is in use by another sftscope process (pid {pid}{shown}); wait for it or remove {path}"
                ) from None
            path.unlink(missing_ok=True)  # stale: its owner died, or it never was a lock of a running sftscope
            continue
        except OSError as exc:
            raise SftscopeError(f"cannot write in {folder}: {exc.strerror or exc} (is it read-only?)") from exc
        try:
            with os.fdopen(fd, "w") as handle:
                handle.write(mine)
        except OSError as exc:  # a full disk: leave no empty lock behind to block the next try
            path.unlink(missing_ok=True)
            raise SftscopeError(f"cannot write {path}: {exc.strerror or exc} (free some space and run again)") from exc
        try:
            yield
        finally:
            path.unlink(missing_ok=True)
        return
    raise SftscopeError(f"cannot take the lock {path}")
