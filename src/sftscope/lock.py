"""One process per run folder: a lock file holding the owner's pid."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from .errors import SftscopeError

LOCK_NAME = ".sftscope.lock"


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
