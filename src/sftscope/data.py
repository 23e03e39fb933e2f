"""Data sets: the usual SFT file formats, validated line by line, as prompt/response pairs.

Without a column mapping each JSONL/Parquet/hub record's format is recognised:
alpaca (``instruction``, ``input``, ``output``), Dolly-15k (``instruction``,
``context``, ``response``), conversational (``messages``, one user turn and one
assistant turn, optional system turn) and prompt-completion (``prompt``,
``completion``); CSV/TSV use the columns ``text`` and ``label``. One column
mapping (``prompt_column`` or ``template``, ``response_column``,
``system_column``) reads any of them alike; integer columns are positions in a
header-less table. ``label_names`` maps integer label ids (and comma-joined
multi-label ids, see ``multi_label``) to names. Every bad input is a one-line
``SftscopeError`` naming the file and line (``file:line``) or row
(``file: row N``). Everything becomes a list of ``Pair``; see ``docs/data.md``.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import random
import re
import string
import unicodedata
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Callable, Iterable, Iterator, NamedTuple, Sequence

from .config import DataSettings
from .errors import SftscopeError

log = logging.getLogger(__name__)

# Shipped data sets (name -> file stem in the package's datasets/ folder), each with three splits.
EMBEDDED_DATASETS = {"emotions": "emotions", "tickets": "tickets"}
EMBEDDED_SPLITS = ("train", "validation", "test")

# A longer line is refused before it is parsed: a missing newline must not load a whole file as one record.
MAX_LINE_BYTES = 1_000_000
MULTI_LABEL_CHOICES = ("skip", "first", "join")
MAX_TEMPLATE_WIDTH = 1000  # a template's {field:>N}: a larger N is a mistake, and a huge one exhausts memory
_MULTI_LABEL = re.compile(r"\d+(\s*,\s*\d+)+")  # "3,7" or "3, 7": several label ids in one response

Record = dict | list  # a JSON object, a table row by column name, or a header-less row by position


@dataclass(frozen=True)
class Pair:
    """One SFT example: the user's prompt and the reference response."""

    prompt: str
    response: str
    system: str | None = None


@dataclass
class ColumnMapping:
    """How a record becomes a pair: named fields, or (nothing set) the record's recognised format.

    Built from the same keys as ``DataSettings``; label names are read once here
    so that a bad label file fails before any data line is read.
    """

    prompt_column: str | int | None = None
    response_column: str | int | None = None
    system_column: str | int | None = None
    template: str | None = None
    label_names: str | Path | Sequence[str] | None = None
    multi_label: str = "skip"
    names: list[str] | None = field(init=False, default=None)
    template_fields: list[str | int] = field(init=False, default_factory=list)

    def __post_init__(self) -> None:
        if self.multi_label not in MULTI_LABEL_CHOICES:
            raise SftscopeError(f"multi_label must be skip, first or join, got {self.multi_label!r}")
        if self.is_set:
            if self.response_column is None:
                raise SftscopeError(f"a column mapping needs response_column (set: {', '.join(self._set_keys())})")
            if self.prompt_column is None and self.template is None:
                keys = ", ".join(self._set_keys())
                raise SftscopeError(f"a column mapping needs prompt_column or template (set: {keys})")
        if self.template is not None:
            self.template_fields = _template_fields(self.template)
        self.names = _label_names(self.label_names)

    @property
    def is_set(self) -> bool:
        """Any mapping key set: records are read through it instead of being recognised."""
        return bool(self._set_keys())

    @property
    def headerless(self) -> bool:
        """Integer columns are positions, so a table read with them has no header row."""
        return any(isinstance(c, int) for c in self.columns())

    def columns(self) -> list[str | int]:
        """The columns named for prompt, response and system (the template's fields are checked per row)."""
        return [c for c in (self.prompt_column, self.response_column, self.system_column) if c is not None]

    def _set_keys(self) -> list[str]:
        keys = ("prompt_column", "response_column", "system_column", "template")
        return [key for key in keys if getattr(self, key) is not None]


def _template_fields(template: str) -> list[str | int]:
    """The fields a template names (``{text}`` -> 'text', ``{0}`` or ``{}`` -> a position)."""
    fields: list[str | int] = []
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise SftscopeError(f"template {template!r} is not a valid format string ({exc})") from None
    automatic = 0  # "{}" fields are numbered in order
    for _, name, spec, _ in parsed:
        if name is None:
            continue
        widths = [int(n) for n in re.findall(r"\d+", spec or "")]
        if "{" in (spec or "") or any(n > MAX_TEMPLATE_WIDTH for n in widths):
            raise SftscopeError(f"template {_short_text(template)}: the format spec {{{name}:{_short_text(spec)}}} "
                                f"asks for a width over {MAX_TEMPLATE_WIDTH} characters (or a nested field)")
        base = re.split(r"[.\[]", name, maxsplit=1)[0]
        if base == "":
            base, automatic = str(automatic), automatic + 1
        fields.append(int(base) if base.isdigit() else base)
    if not fields:
        raise SftscopeError(f"template {template!r} names no field ({{text}}, {{0}}): every prompt would be the same")
    return fields


def _label_names(label_names) -> list[str] | None:
    if label_names is None:
        return None
    if isinstance(label_names, (str, Path)):
        path = Path(label_names)
        if not path.is_file():
            raise SftscopeError(f"label-name file not found: {path}")
        names = [line.strip() for line in _decode(path, path.read_bytes()).splitlines() if line.strip()]
    else:
        names = [str(name) for name in label_names]
    if not names:
        raise SftscopeError("label names are empty")
    return names


def nfc(text: str) -> str:
    """Unicode NFC: "cafe" + a combining accent and "café" are one word, in training, scoring and players alike."""
    return unicodedata.normalize("NFC", text)


def normalized(pair: Pair) -> Pair:
    return Pair(nfc(pair.prompt), nfc(pair.response), None if pair.system is None else nfc(pair.system))


# --------------------------------------------------------------------------- one record -> one pair


def pair_from_record(record, where: str, mapping: ColumnMapping | None = None) -> Pair | None:
    """One record as a pair: through the mapping when set, else by its recognised format.

    None means a multi-label row dropped by ``multi_label: skip``.
    """
    mapping = mapping or ColumnMapping()
    if mapping.is_set:
        return _mapped_pair(record, where, mapping)
    pair = _recognised_pair(record, where)
    if mapping.names is None:
        return pair
    response = _label(pair.response.strip(), mapping, where)
    return None if response is None else replace(pair, response=response)


def _recognised_pair(record, where: str) -> Pair:
    """Alpaca, Dolly-15k, messages or prompt-completion, told apart by their keys."""
    if not isinstance(record, dict):
        raise SftscopeError(f"{where}: expected a JSON object, got {type(record).__name__}")
    if "messages" in record:
        return _from_messages(record["messages"], where)
    if "instruction" in record and "response" in record and "output" not in record:
        return _from_instruction(record, "context", "response", where)  # Dolly-15k
    if "instruction" in record or "output" in record:
        return _from_instruction(record, "input", "output", where)  # alpaca
    if "prompt" in record or "completion" in record:
        _require_text(record.get("prompt"), "prompt", where)
        completion = _response_text(record.get("completion"), "completion", where)
        return Pair(record["prompt"], completion)
    keys = ", ".join(sorted(map(str, record))) or "none"
    raise SftscopeError(
        f"{where}: unknown record format (keys: {keys}); "
        "expected messages, instruction/output, instruction/response or prompt/completion"
    )


def _from_instruction(record: dict, extra_key: str, response_key: str, where: str) -> Pair:
    """Alpaca and Dolly: the instruction, then the input (context) after a blank line when there is one."""
    instruction, extra, response = record.get("instruction"), record.get(extra_key) or "", record.get(response_key)
    _require_text(instruction, "instruction", where)
    response = _response_text(response, response_key, where)
    if not isinstance(extra, str):
        raise SftscopeError(f"{where}: '{extra_key}' must be a string")
    prompt = f"{instruction}\n\n{extra}" if extra.strip() else instruction
    return Pair(prompt, response)


def _require_text(value, name: str, where: str) -> None:
    if value is None or (isinstance(value, str) and not value.strip()):
        raise SftscopeError(f"{where}: '{name}' is missing or empty")
    if not isinstance(value, str):
        raise SftscopeError(f"{where}: '{name}' must be text, got {type(value).__name__} ({_short_text(value)})")


def _response_text(value, name: str, where: str) -> str:
    """A response: text, or a number (a label id such as 3 becomes "3", as in mapped columns)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return _plain(value)
    _require_text(value, name, where)
    return value


def _short_text(value, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _from_messages(messages, where: str) -> Pair:
    if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
        raise SftscopeError(f"{where}: 'messages' must be a list of {{role, content}} objects")
    roles = [m.get("role") for m in messages]
    system = None
    if roles and roles[0] == "system":
        system = messages[0].get("content")
        messages, roles = messages[1:], roles[1:]
    if roles != ["user", "assistant"]:
        raise SftscopeError(
            f"{where}: 'messages' must be one user turn then one assistant turn (optional system first), got {roles}"
        )
    _require_text(messages[0].get("content"), "user content", where)
    answer = _response_text(messages[1].get("content"), "assistant content", where)
    return Pair(messages[0]["content"], answer, system)


def _mapped_pair(record, where: str, mapping: ColumnMapping) -> Pair | None:
    """The prompt from the template or prompt column, the response (a label) and the system text from theirs."""
    if not isinstance(record, (dict, list)):
        raise SftscopeError(f"{where}: expected a JSON object, got {type(record).__name__}")
    if mapping.template is not None:
        prompt = _fill(mapping, record, where)
    else:
        prompt = _text(record, mapping.prompt_column, where)
    response = _label(_text(record, mapping.response_column, where).strip(), mapping, where)
    if response is None:
        return None
    system = None if mapping.system_column is None else _value(record, mapping.system_column, where) or None
    return Pair(prompt, response, system)


def _fill(mapping: ColumnMapping, record: Record, where: str) -> str:
    """``template.format(*values, **fields)``; the fields it names must exist, and not all be empty."""
    values = list(record.values()) if isinstance(record, dict) else list(record)
    fields = {str(k): v for k, v in record.items()} if isinstance(record, dict) else {}
    for name in mapping.template_fields:
        if (name not in fields) if isinstance(name, str) else (name >= len(values)):
            known = f"fields: {', '.join(fields)}" if fields else f"a header-less row: positions 0-{len(values) - 1}"
            raise SftscopeError(f"{where}: template names unknown field {{{name}}} ({known})")
    named = list(dict.fromkeys(mapping.template_fields))
    if not any(_value(record, name, where).strip() for name in named):  # one empty optional field is fine
        what = "is" if len(named) == 1 else "are all"
        raise SftscopeError(f"{where}: {', '.join(map(_column_name, named))} {what} missing or empty")
    try:
        return mapping.template.format(*[_display(v) for v in values], **{k: _display(v) for k, v in fields.items()})
    except (KeyError, IndexError, ValueError, AttributeError, TypeError) as exc:
        raise SftscopeError(f"{where}: cannot fill the template ({type(exc).__name__}: {exc})") from None


def _display(value):
    """A value as the template shows it: text as is, 3.0 as 3, nothing as empty."""
    plain = _plain(value)
    return value if plain is None else plain


def _field(record: Record, column: str | int, where: str):
    """One field by name, or by position (0-based) in a header-less row or in the record's field order."""
    if isinstance(record, dict) and isinstance(column, str):
        if column not in record:
            raise SftscopeError(f"{where}: missing field {column!r} (fields: {', '.join(map(str, record)) or 'none'})")
        return record[column]
    values = list(record.values()) if isinstance(record, dict) else record
    if isinstance(column, str):
        raise SftscopeError(f"{where}: a header-less row has no column {column!r}; use its position (0, 1, ...)")
    if column >= len(values):
        raise SftscopeError(f"{where}: no column {column} (the row has {len(values)})")
    return values[column]


def _value(record: Record, column: str | int, where: str) -> str:
    """A field as text, possibly empty; a list or an object is refused."""
    raw = _field(record, column, where)
    value = _plain(raw)
    if value is None:
        raise SftscopeError(f"{where}: {_column_name(column)} must be text or a number, got {type(raw).__name__}")
    return value


def _text(record: Record, column: str | int, where: str) -> str:
    """A field that must hold text (a prompt, a response)."""
    value = _value(record, column, where)
    if not value.strip():
        raise SftscopeError(f"{where}: {_column_name(column)} is missing or empty")
    return value


def _plain(value) -> str | None:
    """A field as text: a number as a string (3.0 as "3"), a list of ids as "3,7", null as ""; None: not text."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, (list, tuple)) and all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        return ",".join(map(str, value))  # a multi-label list as the hub has it: [3, 7]
    return None


def _column_name(column: str | int) -> str:
    return f"column {column}" if isinstance(column, int) else repr(column)


def _label(value: str, mapping: ColumnMapping, where: str) -> str | None:
    """The response through the label names: an id, a name, or several ids (None: a multi-label row to skip)."""
    if not value:
        raise SftscopeError(f"{where}: empty label")
    if mapping.names is None:
        return value
    if _MULTI_LABEL.fullmatch(value):
        labels = list(dict.fromkeys(_label_name(part.strip(), mapping.names, where) for part in value.split(",")))
        if mapping.multi_label == "skip":
            return None
        return labels[0] if mapping.multi_label == "first" else ", ".join(labels)
    return _label_name(value, mapping.names, where)


def _label_name(value: str, names: list[str], where: str) -> str:
    try:
        index = int(value)
    except ValueError:
        if value in names:
            return value
        raise SftscopeError(f"{where}: label {value!r} is neither an index nor a known label name") from None
    if not 0 <= index < len(names):
        raise SftscopeError(f"{where}: label index {index} out of range (0-{len(names) - 1})")
    return names[index]


# --------------------------------------------------------------------------- files -> records -> pairs


def _collect(source: str, records: Iterable[tuple[str, object]], mapping: ColumnMapping) -> list[Pair]:
    """Every record as a pair; multi-label rows dropped by ``skip`` are counted and reported once."""
    pairs, skipped = [], 0
    for where, record in records:
        pair = pair_from_record(record, where, mapping)
        if pair is None:
            skipped += 1
        else:
            pairs.append(normalized(pair))
    if skipped:
        log.warning("%s: skipped %d multi-label rows (multi_label: skip)", source, skipped)
    if not pairs:
        raise SftscopeError(f"{source}: no examples" + (f" ({skipped} multi-label rows skipped)" if skipped else ""))
    return pairs


def _existing(path: str | Path) -> Path:
    """The path of a data file that exists and is a regular file (a link to a device such as /dev/zero is not)."""
    path = Path(os.path.expanduser(str(path)))
    if not path.exists():
        raise SftscopeError(f"data file not found: {path}")
    if not path.is_file():
        kind = "a folder" if path.is_dir() else "not a regular file (a device, a pipe or a socket)"
        raise SftscopeError(f"{path}: {kind}; a data file must be a file")
    return path


def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise SftscopeError(f"{path}: cannot read ({exc.strerror or exc})") from None


def _decode(path: Path, data: bytes) -> str:
    """Strict UTF-8 for a whole file: the first bad byte is named with its line, not replaced."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        column = exc.start - data.rfind(b"\n", 0, exc.start)
        raise SftscopeError(f"{path}:{line}: {_not_utf8(data[exc.start], column)}") from None
    return text.removeprefix("\ufeff")


def _not_utf8(byte: int, column: int) -> str:
    return f"not UTF-8 (byte 0x{byte:02x} at byte {column} of the line); save the file as UTF-8"


def _check_line_lengths(path: Path, data: bytes) -> None:
    """Refuse a line over ``MAX_LINE_BYTES`` before parsing: it is a broken file, not a record."""
    if len(data) <= MAX_LINE_BYTES:
        return
    for number, line in enumerate(data.split(b"\n"), start=1):
        if len(line.rstrip(b"\r")) > MAX_LINE_BYTES:
            raise SftscopeError(f"{path}:{number}: line longer than {MAX_LINE_BYTES} bytes")


def read_jsonl(path: str | Path, **options) -> list[Pair]:
    """Read a JSONL file in any supported form, or through a column mapping; a bad line names file and line."""
    path = _existing(path)
    mapping = ColumnMapping(**options)
    return _collect(str(path), jsonl_records(path), mapping)


def jsonl_records(path: Path) -> Iterator[tuple[str, object]]:
    """Each non-blank line's JSON value, read in binary so that a bad byte or an over-long line has its number."""
    try:
        handle = path.open("rb")
    except OSError as exc:
        raise SftscopeError(f"{path}: cannot read ({exc.strerror or exc})") from None
    with handle:
        lines = iter(lambda: handle.readline(MAX_LINE_BYTES + 2), b"")  # bounded: a huge line is never read whole
        for number, raw in enumerate(lines, start=1):
            where = f"{path}:{number}"
            line = _line_text(raw.rstrip(b"\r\n"), where)
            if number == 1:
                line = line.removeprefix("\ufeff")
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                hint = (" (sftscope reads one JSON object per line, JSONL; this file looks like one JSON array: write "
                        "each record on a line of its own)") if number == 1 and line.lstrip().startswith("[") else ""
                raise SftscopeError(f"{where}: malformed JSON ({exc.msg}){hint}") from None
            if not isinstance(record, dict):  # also with a mapping: a JSON array is not a header-less row
                hint = (" (sftscope reads one JSON object per line, JSONL; this line holds a JSON array: write "
                        "each record on a line of its own)") if isinstance(record, list) else ""
                raise SftscopeError(f"{where}: expected a JSON object, got {type(record).__name__}{hint}")
            yield where, record


def _line_text(raw: bytes, where: str) -> str:
    if len(raw) > MAX_LINE_BYTES:
        raise SftscopeError(f"{where}: line longer than {MAX_LINE_BYTES} bytes")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SftscopeError(f"{where}: {_not_utf8(raw[exc.start], exc.start + 1)}") from None


def read_table(path: str | Path, *, delimiter: str | None = None, **options) -> list[Pair]:
    """Read CSV/TSV rows as pairs, through the column mapping or else the columns ``text`` and ``label``.

    Integer columns are 0-based positions in a table without a header row.
    Errors name the physical line a row starts on.
    """
    path = _existing(path)
    mapping = ColumnMapping(**options)
    if not mapping.is_set:
        mapping = replace(mapping, prompt_column="text", response_column="label")
    named = [c for c in mapping.columns() if isinstance(c, str)]
    if mapping.headerless and named:
        raise SftscopeError(
            f"{path}: integer columns mean a table without a header row, so column {named[0]!r} cannot be "
            "found by name; give its position"
        )
    if delimiter is None:
        delimiter = "\t" if path.suffix.lower() in (".tsv", ".tab") else ","
    data = _read_bytes(path)
    _check_line_lengths(path, data)
    return _collect(str(path), _table_records(path, _decode(path, data), delimiter, mapping), mapping)


def _table_records(path: Path, text: str, delimiter: str, mapping: ColumnMapping) -> Iterator[tuple[str, Record]]:
    """Rows by column name (after the header) or by position (header-less), all of one width."""
    header: list[str] | None = None
    width = None
    for line, row in _csv_rows(path, text, delimiter):
        if header is None and not mapping.headerless:
            header = [name.strip() for name in row]
            missing = [c for c in mapping.columns() if c not in header]
            if missing:
                raise SftscopeError(f"{path}:{line}: missing column {missing[0]!r} (columns: {', '.join(header)})")
            width = len(header)
            continue
        width = width or len(row)
        if len(row) != width:
            against = "the header has" if header is not None else "the first row has"
            raise SftscopeError(f"{path}:{line}: wrong number of fields ({len(row)}; {against} {width})")
        yield f"{path}:{line}", (dict(zip(header, row)) if header is not None else row)


def _csv_rows(path: Path, text: str, delimiter: str) -> Iterator[tuple[int, list[str]]]:
    """Non-blank rows with the physical line each starts on; any ``csv.Error`` names its line."""
    csv.field_size_limit(max(csv.field_size_limit(), MAX_LINE_BYTES))
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    while True:
        start = reader.line_num + 1
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            raise SftscopeError(f"{path}:{reader.line_num}: {exc}") from None
        if any(cell.strip() for cell in row):
            yield start, row


def read_parquet(path: str | Path, **options) -> list[Pair]:
    """Read Parquet rows as records (recognised, or through the column mapping); errors name the row."""
    import pyarrow  # noqa: PLC0415 - only Parquet needs it
    import pyarrow.parquet as pq  # noqa: PLC0415

    path = _existing(path)
    mapping = ColumnMapping(**options)
    try:
        rows = pq.read_table(path).to_pylist()
    except (pyarrow.ArrowException, OSError, ValueError) as exc:
        raise SftscopeError(f"{path}: not a valid Parquet file ({_first_line(exc)})") from None
    return _collect(str(path), ((f"{path}: row {i}", row) for i, row in enumerate(rows, start=1)), mapping)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


READERS: dict[str, Callable[..., list[Pair]]] = {
    ".jsonl": read_jsonl, ".json": read_jsonl, ".csv": read_table, ".tsv": read_table, ".tab": read_table,
    ".parquet": read_parquet,
}


def embedded_split(name: str, split: str) -> list[Pair]:
    """One split (train, validation or test) of a shipped data set."""
    if name not in EMBEDDED_DATASETS:
        raise SftscopeError(f"unknown embedded data set {name!r} (known: {', '.join(sorted(EMBEDDED_DATASETS))})")
    if split not in EMBEDDED_SPLITS:
        raise SftscopeError(f"unknown split {split!r} of {name!r} (known: {', '.join(EMBEDDED_SPLITS)})")
    folder = resources.files("sftscope") / "datasets"
    return read_jsonl(Path(str(folder / f"{EMBEDDED_DATASETS[name]}_{split}.jsonl")))


def is_local(source: str | Path | None) -> bool:
    """Whether a data source is on this machine (a file or a shipped data set), not a hub name."""
    if source is None:
        return True
    name = str(source).partition(":")[0]
    return name in EMBEDDED_DATASETS or Path(str(source)).exists()


def load_pairs(source: str | Path, **options) -> list[Pair]:
    """Pairs from a file (by extension), a split of a shipped data set (``emotions:validation``), or a hub name.

    ``options`` are the column mapping (``DataSettings``' keys); shipped data sets ignore it.
    A hub name may end in ``:split`` (default ``train``).
    """
    text = str(source)
    if text in EMBEDDED_DATASETS:
        raise SftscopeError(f"{text!r} is an embedded data set with splits: use load_splits or embedded_split")
    name, _, split = text.partition(":")
    if name in EMBEDDED_DATASETS and split:  # "emotions:validation"
        return embedded_split(name, split)
    path = Path(os.path.expanduser(text))
    reader = READERS.get(path.suffix.lower())
    if reader is not None:
        return reader(path, **options)
    if path.exists():
        kinds = ", ".join(READERS)
        raise SftscopeError(f"{path}: unknown data file type {path.suffix or '(no extension)'!r} (use {kinds})")
    if _looks_local(text):
        raise SftscopeError(f"data file not found: {path} (and it is no hub data set name, owner/name)")
    return _load_hub(name, split or "train", **options)


def _looks_local(text: str) -> bool:
    """A path on this machine rather than a hub name: absolute, relative with ./ ../ ~, nested, or in a local folder."""
    if text.startswith(("/", ".", "~")) or text.count("/") > 1 or "\\" in text:
        return True
    first = text.split("/", 1)[0]
    return "/" in text and Path(first).is_dir()


def _load_hub(name: str, split: str = "train", **options) -> list[Pair]:
    from .models import HUB_TIMEOUT_S, hub_reachable  # noqa: PLC0415

    mapping = ColumnMapping(**options)
    if os.environ.get("HF_HUB_OFFLINE", "0") in ("", "0") and not hub_reachable():
        raise SftscopeError(f"data set {name!r} is not a file here, and the hub did not answer within "
                            f"{HUB_TIMEOUT_S:.0f} s: connect, or set HF_HUB_OFFLINE=1 to use a cached copy")
    try:
        import datasets  # noqa: PLC0415

        rows = datasets.load_dataset(name, split=split)
    except Exception as exc:  # noqa: BLE001 - the hub raises many kinds; all mean "cannot load"
        raise SftscopeError(f"cannot load data set {name!r}: not a file, and the hub says: {_first_line(exc)}") from exc
    return _collect(name, ((f"{name}: row {i}", dict(row)) for i, row in enumerate(rows, start=1)), mapping)


class Splits(NamedTuple):
    """The three splits of a run: train (the weights see it), validation (the stopping rules see it), test
    (only the report sees it: it judges what the rules chose)."""

    train: list[Pair]
    validation: list[Pair]
    test: list[Pair]

    def sizes(self) -> str:
        return f"{len(self.train)} train / {len(self.validation)} validation / {len(self.test)} test examples"


FEW_VALIDATION = 30  # below this an accuracy moves in steps of more than 3 points: said with the split sizes


def load_splits(
    train: str | Path,
    test: str | Path | None = None,
    validation: str | Path | None = None,
    *,
    test_ratio: float = 0.2,
    validation_ratio: float = 0.2,
    seed: int = 0,
    **options,
) -> Splits:
    """Train, validation and test pairs: a shipped set's own splits, separate sources, or seeded splits of ``train``.

    A split that has no source of its own is drawn from the shuffled ``train``
    source: first the test split (``test_ratio`` of it), then the validation
    split (``validation_ratio`` of it); the rest is for training.
    """
    if str(train) in EMBEDDED_DATASETS:
        for key, value in (("test", test), ("validation", validation)):
            if value is not None:
                raise SftscopeError(f"data.train {train!r} names every split of a shipped data set, so data.{key} "
                                    f"{value!r} would be ignored: use data.train: {train}:train")
        return Splits(*(embedded_split(str(train), split) for split in ("train", "validation", "test")))
    pairs = load_pairs(train, **options)
    drawn = {"test": (test, test_ratio), "validation": (validation, validation_ratio)}
    order = list(range(len(pairs)))
    random.Random(seed).shuffle(order)
    taken: dict[str, list[int]] = {}
    start = 0
    for split, (source, ratio) in drawn.items():
        if source is None:
            if not 0 < ratio < 1:
                raise SftscopeError(f"{split}_ratio must be in (0, 1), got {ratio}")
            count = min(max(1, round(len(pairs) * ratio)), len(pairs) - start)
            taken[split] = order[start : start + count]
            start += count
    if start >= len(pairs):
        if len(pairs) >= 2:
            clauses = " and ".join(f"{split}_ratio {drawn[split][1]} puts {len(indices)} in the {split} split"
                                   for split, indices in taken.items())
            raise SftscopeError(f"{train}: of its {len(pairs)} examples, {clauses}, leaving none to train on: "
                                "lower the ratio")
        raise SftscopeError(f"{train}: {len(pairs)} example is too few to split into train, validation and test")
    held = {i for indices in taken.values() for i in indices}
    splits = {split: [pairs[i] for i in sorted(indices)] for split, indices in taken.items()}
    for split, (source, _) in drawn.items():
        if source is not None:
            splits[split] = load_pairs(source, **options)
    return Splits([p for i, p in enumerate(pairs) if i not in held], splits["validation"], splits["test"])


def mapping_options(settings: DataSettings) -> dict:
    """The column-mapping keys of a config, as the keyword options of the readers."""
    keys = ("prompt_column", "response_column", "system_column", "template", "label_names", "multi_label")
    return {key: getattr(settings, key) for key in keys}


def split_pairs(settings: DataSettings) -> Splits:
    """The train, validation and test pairs a config describes, truncated to its example limits."""
    splits = load_splits(settings.train, settings.test, settings.validation, test_ratio=settings.test_ratio,
                         validation_ratio=settings.validation_ratio, seed=settings.seed, **mapping_options(settings))
    train, validation, test = splits
    if settings.max_train_examples:
        train = train[: settings.max_train_examples]
    if settings.max_test_examples:
        test = test[: settings.max_test_examples]
    if not train or not test or not validation:
        raise SftscopeError("empty split: train, validation and test all need examples")
    return Splits(train, validation, test)


def split_notes(splits: Splits) -> list[str]:
    """What a user should know about the splits: their sizes, a small validation split, test rows seen in training."""
    notes = [f"data: {splits.sizes()}"]
    if len(splits.validation) < FEW_VALIDATION:
        notes.append(f"data: the validation split has only {len(splits.validation)} examples, so its accuracy moves in "
                     f"steps of {100 / len(splits.validation):.0f} points and the stopping rules decide on noise; "
                     "give more (data.validation_ratio, data.validation)")
    seen = {p.prompt for p in splits.train}
    for split in ("validation", "test"):
        repeated = sum(p.prompt in seen for p in getattr(splits, split))
        if repeated:
            notes.append(f"data: {repeated} of {len(getattr(splits, split))} {split} examples repeat a training prompt: "
                         f"{split} accuracy partly measures recall, not generalisation")
    return notes


def plain_prompt(pair: Pair) -> str:
    """The prompt text a tokenizer without a chat template sees, in training and in scoring."""
    from .players import PLAIN_SEPARATOR  # noqa: PLC0415

    return (f"{pair.system}\n" if pair.system else "") + pair.prompt + PLAIN_SEPARATOR


def chat_messages(pair: Pair) -> list[dict[str, str]]:
    """The prompt as chat messages (system, if any, then user)."""
    return ([{"role": "system", "content": pair.system}] if pair.system else []) + [{"role": "user", "content": pair.prompt}]


def to_plain(pairs: Iterable[Pair]):
    """Prompt-completion text for tokenizers without a chat template (same text as extraction renders)."""
    import datasets  # noqa: PLC0415

    rows = [{"prompt": plain_prompt(p), "completion": p.response} for p in pairs]
    if not rows:
        raise SftscopeError("empty split: no examples to train or evaluate on")
    return datasets.Dataset.from_list(rows)


def to_conversational(pairs: Iterable[Pair]):
    """A ``datasets.Dataset`` in TRL's conversational prompt-completion form (loss on the completion)."""
    import datasets  # noqa: PLC0415

    rows = [{"prompt": chat_messages(p), "completion": [{"role": "assistant", "content": p.response}]} for p in pairs]
    if not rows:
        raise SftscopeError("empty split: no examples to train or evaluate on")
    return datasets.Dataset.from_list(rows)
