"""Data sets: the usual SFT file formats, validated line by line, as prompt/response pairs.

Supported: JSONL in alpaca (``instruction``, ``input``, ``output``),
conversational (``messages``, one user turn and one assistant turn, optional
system turn) and prompt-completion (``prompt``, ``completion``) form; CSV/TSV
with a column mapping and an optional label-name file (a classification set
becomes instruction-response pairs through a prompt template); and, online,
Hugging Face ``datasets`` names. Everything becomes a list of ``Pair``.
"""

from __future__ import annotations

import csv
import json
import random
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Iterable, Sequence

from .config import DataSettings
from .errors import SftscopeError

# Shipped data sets (name -> file stem in the package's datasets/ folder), each with three splits.
EMBEDDED_DATASETS = {"emotions": "emotions", "tickets": "tickets"}
EMBEDDED_SPLITS = ("train", "validation", "test")


@dataclass(frozen=True)
class Pair:
    """One SFT example: the user's prompt and the reference response."""

    prompt: str
    response: str
    system: str | None = None


def pair_from_record(record: dict, where: str) -> Pair:
    """Recognise one JSON record's format and turn it into a pair."""
    if not isinstance(record, dict):
        raise SftscopeError(f"{where}: expected a JSON object, got {type(record).__name__}")
    if "messages" in record:
        return _from_messages(record["messages"], where)
    if "instruction" in record or "output" in record:
        instruction, extra, output = record.get("instruction"), record.get("input") or "", record.get("output")
        _require_text(instruction, "instruction", where)
        _require_text(output, "output", where)
        if not isinstance(extra, str):
            raise SftscopeError(f"{where}: 'input' must be a string")
        prompt = f"{instruction}\n\n{extra}" if extra.strip() else instruction
        return Pair(prompt, output)
    if "prompt" in record or "completion" in record:
        _require_text(record.get("prompt"), "prompt", where)
        _require_text(record.get("completion"), "completion", where)
        return Pair(record["prompt"], record["completion"])
    keys = ", ".join(sorted(record)) or "none"
    raise SftscopeError(
        f"{where}: unknown record format (keys: {keys}); expected messages, instruction/output or prompt/completion"
    )


def _require_text(value, name: str, where: str) -> None:
    if not isinstance(value, str) or not value.strip():
        raise SftscopeError(f"{where}: '{name}' is missing or empty")


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
    _require_text(messages[1].get("content"), "assistant content", where)
    return Pair(messages[0]["content"], messages[1]["content"], system)


def read_jsonl(path: str | Path) -> list[Pair]:
    """Read a JSONL file in any supported form; a bad line names file and line."""
    path = Path(path)
    if not path.exists():
        raise SftscopeError(f"data file not found: {path}")
    pairs = []
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            where = f"{path}:{number}"
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise SftscopeError(f"{where}: malformed JSON ({exc.msg})") from None
            pairs.append(pair_from_record(record, where))
    if not pairs:
        raise SftscopeError(f"{path}: no examples")
    return pairs


def read_table(
    path: str | Path,
    *,
    prompt_column: str = "text",
    response_column: str = "label",
    template: str = "{text}",
    label_names: str | Path | Sequence[str] | None = None,
    delimiter: str | None = None,
) -> list[Pair]:
    """Read CSV/TSV rows as pairs.

    The prompt is ``template`` filled with the row's columns (``{text}`` etc.);
    the response is ``response_column``, mapped through ``label_names`` (a file
    with one name per line, or a list) when it holds integer label ids.
    """
    path = Path(path)
    if not path.exists():
        raise SftscopeError(f"data file not found: {path}")
    if delimiter is None:
        delimiter = "\t" if path.suffix.lower() in (".tsv", ".tab") else ","
    names = _label_names(label_names)
    pairs = []
    with path.open(encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle, delimiter=delimiter)
        columns = reader.fieldnames or []
        for needed in (prompt_column, response_column):
            if needed not in columns:
                raise SftscopeError(f"{path}: missing column {needed!r} (columns: {', '.join(columns)})")
        for number, row in enumerate(reader, start=2):
            where = f"{path}:{number}"
            if None in row or any(v is None for v in row.values()):
                raise SftscopeError(f"{where}: wrong number of fields")
            try:
                prompt = template.format(**row) if "{" in template else template + row[prompt_column]
            except KeyError as exc:
                raise SftscopeError(f"{where}: template names unknown column {exc}") from None
            response = _label(row[response_column].strip(), names, where)
            _require_text(row[prompt_column], prompt_column, where)
            pairs.append(Pair(prompt, response))
    if not pairs:
        raise SftscopeError(f"{path}: no examples")
    return pairs


def _label_names(label_names) -> list[str] | None:
    if label_names is None:
        return None
    if isinstance(label_names, (str, Path)):
        path = Path(label_names)
        if not path.exists():
            raise SftscopeError(f"label-name file not found: {path}")
        names = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    else:
        names = list(label_names)
    if not names:
        raise SftscopeError("label names are empty")
    return names


def _label(value: str, names: list[str] | None, where: str) -> str:
    if not value:
        raise SftscopeError(f"{where}: empty label")
    if names is None:
        return value
    try:
        index = int(value)
    except ValueError:
        if value in names:
            return value
        raise SftscopeError(f"{where}: label {value!r} is neither an index nor a known label name") from None
    if not 0 <= index < len(names):
        raise SftscopeError(f"{where}: label index {index} out of range (0-{len(names) - 1})")
    return names[index]


def embedded_split(name: str, split: str) -> list[Pair]:
    """One split (train, validation or test) of a shipped data set."""
    if name not in EMBEDDED_DATASETS:
        raise SftscopeError(f"unknown embedded data set {name!r} (known: {', '.join(sorted(EMBEDDED_DATASETS))})")
    if split not in EMBEDDED_SPLITS:
        raise SftscopeError(f"unknown split {split!r} of {name!r} (known: {', '.join(EMBEDDED_SPLITS)})")
    folder = resources.files("sftscope") / "datasets"
    return read_jsonl(Path(str(folder / f"{EMBEDDED_DATASETS[name]}_{split}.jsonl")))


def load_pairs(source: str | Path, **table_options) -> list[Pair]:
    """Pairs from a file (by extension), an embedded data set name, or a hub data set name."""
    text = str(source)
    if text in EMBEDDED_DATASETS:
        raise SftscopeError(f"{text!r} is an embedded data set with splits: use load_splits or embedded_split")
    path = Path(text)
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".json"):
        return read_jsonl(path)
    if suffix in (".csv", ".tsv", ".tab"):
        return read_table(path, **table_options)
    if path.exists():
        raise SftscopeError(f"{path}: unknown data file type {suffix!r} (use .jsonl, .csv or .tsv)")
    return _load_hub(text, **table_options)


def _load_hub(name: str, split: str = "train", **_ignored) -> list[Pair]:
    try:
        import datasets  # noqa: PLC0415

        rows = datasets.load_dataset(name, split=split)
    except Exception as exc:  # noqa: BLE001 - the hub raises many kinds; all mean "cannot load"
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise SftscopeError(f"cannot load data set {name!r}: not a file, and the hub says: {first}") from exc
    return [pair_from_record(dict(row), f"{name}[{i}]") for i, row in enumerate(rows)]


def load_splits(
    train: str | Path,
    test: str | Path | None = None,
    *,
    test_ratio: float = 0.2,
    seed: int = 0,
    **table_options,
) -> tuple[list[Pair], list[Pair]]:
    """Train and test pairs: from two sources, from an embedded set, or one source split by ratio."""
    if str(train) in EMBEDDED_DATASETS:
        return embedded_split(str(train), "train"), embedded_split(str(train), "test")
    pairs = load_pairs(train, **table_options)
    if test is not None:
        return pairs, load_pairs(test, **table_options)
    if not 0 < test_ratio < 1:
        raise SftscopeError(f"test_ratio must be in (0, 1), got {test_ratio}")
    order = list(range(len(pairs)))
    random.Random(seed).shuffle(order)
    n_test = max(1, round(len(pairs) * test_ratio))
    if n_test >= len(pairs):
        raise SftscopeError(f"{train}: {len(pairs)} examples are too few to split into train and test")
    test_idx = set(order[:n_test])
    return [p for i, p in enumerate(pairs) if i not in test_idx], [p for i, p in enumerate(pairs) if i in test_idx]


def split_pairs(settings: DataSettings) -> tuple[list[Pair], list[Pair]]:
    """The train and test pairs a config describes, truncated to its example limits."""
    train, test = load_splits(
        settings.train, settings.test, test_ratio=settings.test_ratio, seed=settings.seed,
        prompt_column=settings.prompt_column, response_column=settings.response_column, template=settings.template,
        label_names=settings.label_names,
    )
    if settings.max_train_examples:
        train = train[: settings.max_train_examples]
    if settings.max_test_examples:
        test = test[: settings.max_test_examples]
    if not train or not test:
        raise SftscopeError("empty split: both train and test need examples")
    return train, test


def to_plain(pairs: Iterable[Pair]):
    """Prompt-completion text for tokenizers without a chat template (same text as extraction renders)."""
    import datasets  # noqa: PLC0415

    from .players import PLAIN_SEPARATOR  # noqa: PLC0415

    rows = [
        {"prompt": (f"{p.system}\n" if p.system else "") + p.prompt + PLAIN_SEPARATOR, "completion": p.response}
        for p in pairs
    ]
    if not rows:
        raise SftscopeError("empty split: no examples to train or evaluate on")
    return datasets.Dataset.from_list(rows)


def to_conversational(pairs: Iterable[Pair]):
    """A ``datasets.Dataset`` in TRL's conversational prompt-completion form (loss on the completion)."""
    import datasets  # noqa: PLC0415

    rows = []
    for pair in pairs:
        prompt = [{"role": "system", "content": pair.system}] if pair.system else []
        prompt.append({"role": "user", "content": pair.prompt})
        rows.append({"prompt": prompt, "completion": [{"role": "assistant", "content": pair.response}]})
    if not rows:
        raise SftscopeError("empty split: no examples to train or evaluate on")
    return datasets.Dataset.from_list(rows)
