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
    """Send library logging and known deprecation warnings to a (pending) log file; keep the terminal quiet.

    transformers and datasets are configured when something first imports them
    (see :func:`_after_import`), so a command that never needs them never waits for them.
    """
    global _buffer, _counter, _log_path
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
    quiet = not (verbose or debug)
    _after_import("transformers", lambda: _quiet_transformers(quiet))
    _after_import("datasets", _quiet_datasets)
    warnings.showwarning = _show_warning


def _quiet_transformers(quiet: bool) -> None:
    from transformers.utils import logging as hf_logging  # noqa: PLC0415

    hf_logging.disable_default_handler()  # transformers' own stderr handler
    hf_logging.enable_propagation()
    hf_logging.set_verbosity_info()
    if quiet:
        hf_logging.disable_progress_bar()


def _quiet_datasets() -> None:
    import datasets  # noqa: PLC0415

    datasets.utils.logging.disable_progress_bar()
    datasets.utils.logging.set_verbosity_warning()


def _after_import(name: str, configure) -> None:
    """Run ``configure`` once the package ``name`` is imported: now if it is already, else right after its import."""
    if name in sys.modules:
        configure()
        return
    sys.meta_path.insert(0, _ConfigureAfterImport(name, configure))


class _ConfigureAfterImport:
    """A meta-path finder that lets the normal import of one package happen, then configures it once."""

    def __init__(self, name: str, configure) -> None:
        self.name, self.configure = name, configure

    def find_spec(self, fullname, path=None, target=None):
        if fullname != self.name:
            return None
        import importlib.util  # noqa: PLC0415

        sys.meta_path.remove(self)  # one use; also lets the lookup below find the real package
        spec = importlib.util.find_spec(fullname)
        if spec is None or spec.loader is None:
            return spec
        loader, configure = spec.loader, self.configure

        def exec_module(module):
            loader.exec_module(module)
            configure()

        spec.loader = _Wrapped(loader, exec_module)
        return spec


class _Wrapped:
    """A loader that runs ``exec_module`` of its own and delegates everything else."""

    def __init__(self, loader, exec_module) -> None:
        self._loader, self.exec_module = loader, exec_module

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def __getattr__(self, attr):
        return getattr(self._loader, attr)


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
