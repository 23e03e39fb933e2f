"""What the terminal shows: the tool's own lines and progress bars. Library chatter goes to the run's log file.

The command line calls :func:`route_output` once. From then on:

- transformers, TRL, PEFT, datasets and accelerate log records go to the log
  file; errors among them still reach the terminal;
- the known deprecation warnings of those libraries (``FutureWarning``,
  ``DeprecationWarning``) go to the log file; any other warning is shown as one
  line *and* logged: it may tell the user that something is wrong;
- datasets' and the Trainer's own progress bars are replaced by the tool's.

Records come before the run folder is known (or allowed to be written); they
wait in memory until :func:`attach_log_file` names the file. ``--verbose``
shows library records of level INFO and above on the terminal as well.
"""

from __future__ import annotations

import logging
import logging.handlers
import sys
import warnings
from pathlib import Path

LIBRARIES = ("transformers", "trl", "peft", "datasets", "accelerate", "huggingface_hub", "torch", "highspy")
KNOWN_NOISE = (DeprecationWarning, FutureWarning, PendingDeprecationWarning)
FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

_buffer: logging.handlers.MemoryHandler | None = None
_counter: _Counter | None = None
_log_path: Path | None = None


class _Counter(logging.Handler):
    """Counts library warnings that went only to the file, so the user can be told they exist."""

    def __init__(self) -> None:
        super().__init__(level=logging.WARNING)
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno < logging.ERROR and not record.name.startswith("sftscope"):
            self.count += 1


def _from_library(filename: str) -> bool:
    parts = Path(filename).parts
    return any(name in parts for name in LIBRARIES)


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """``warnings.showwarning``: known library deprecations to the log only, the rest to the terminal too."""
    text = f"{category.__name__}: {message} ({filename}:{lineno})"
    known = issubclass(category, KNOWN_NOISE) and _from_library(filename)
    logging.getLogger("py.warnings").log(logging.INFO if known else logging.WARNING, text)
    if not known:
        print(f"sftscope: warning: {category.__name__}: {str(message).splitlines()[0]}", file=sys.stderr)


def route_output(*, verbose: bool = False, debug: bool = False) -> None:
    """Send library logging and known deprecation warnings to a (pending) log file; keep the terminal quiet."""
    global _buffer, _counter, _log_path
    import datasets  # noqa: PLC0415
    from transformers.utils import logging as hf_logging  # noqa: PLC0415

    logging.raiseExceptions = False  # a log line that cannot be written (full disk) must not bury the real error
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    root.setLevel(logging.DEBUG if debug else logging.INFO)
    terminal = logging.StreamHandler(sys.stderr)
    terminal.setLevel(logging.DEBUG if debug else logging.INFO if verbose else logging.WARNING)
    terminal.addFilter(lambda r: r.name.startswith("sftscope") or r.levelno >= logging.ERROR or verbose or debug)
    terminal.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    _buffer = logging.handlers.MemoryHandler(capacity=100_000, flushLevel=logging.CRITICAL + 1)  # until a run folder
    _counter = _Counter()
    _log_path = None
    for handler in (terminal, _buffer, _counter):
        root.addHandler(handler)

    hf_logging.disable_default_handler()  # transformers' own stderr handler
    hf_logging.enable_propagation()
    hf_logging.set_verbosity_info()
    datasets.utils.logging.disable_progress_bar()
    datasets.utils.logging.set_verbosity_warning()
    if not (verbose or debug):
        hf_logging.disable_progress_bar()
    warnings.showwarning = _show_warning


def attach_log_file(path: Path) -> Path:
    """Write everything logged so far, and from now on, to ``path`` (appending)."""
    global _buffer, _log_path
    if _buffer is None:  # output not routed (library use), or already attached
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter(FORMAT))
    _buffer.setTarget(handler)
    _buffer.flush()
    root = logging.getLogger()
    root.removeHandler(_buffer)
    _buffer.close()
    _buffer = None
    root.addHandler(handler)
    _log_path = path
    return path


def closing_note() -> str | None:
    """One line telling the user that library warnings went to the log file, if any did."""
    if not _counter or not _counter.count:
        return None
    if _log_path is None:  # a command without a run folder (extract), or one that failed before it had one
        return f"{_counter.count} library warning(s) not shown (--verbose shows them)"
    return f"{_counter.count} library warning(s) written to {_log_path} (--verbose shows them)"
