import json
import logging
import re
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sftscope import SftscopeError
from sftscope.config import DataSettings, build
from sftscope.data import (
    EMBEDDED_DATASETS, MAX_LINE_BYTES, Pair, embedded_split, load_pairs, load_splits, read_jsonl,
    read_parquet, read_table, split_pairs,
)

DATA = Path(__file__).parent / "data"
GO_LABELS = DATA / "goemotions_emotions.txt"
PAIRS = [Pair("Classify: we won the game", "joy"), Pair("Classify: my flight got cancelled", "anger")]


def write_lines(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return path


def test_every_format_gives_the_same_pairs(tmp_path):
    alpaca = write_lines(tmp_path / "a.jsonl", [
        {"instruction": "Classify:", "input": "we won the game", "output": "joy"},
        {"instruction": "Classify:", "input": "my flight got cancelled", "output": "anger"},
    ])
    messages = write_lines(tmp_path / "m.jsonl", [
        {"messages": [{"role": "user", "content": p.prompt}, {"role": "assistant", "content": p.response}]}
        for p in PAIRS
    ])
    completion = write_lines(tmp_path / "c.jsonl", [{"prompt": p.prompt, "completion": p.response} for p in PAIRS])
    csv_file = tmp_path / "t.csv"
    csv_file.write_text('text,label\nwe won the game,0\n"my flight got cancelled",1\n', encoding="utf-8")
    names = tmp_path / "labels.txt"
    names.write_text("joy\nanger\n", encoding="utf-8")
    tsv_file = tmp_path / "t.tsv"
    tsv_file.write_text("text\tlabel\nwe won the game\tjoy\nmy flight got cancelled\tanger\n", encoding="utf-8")
    alpaca_pairs = [Pair(p.prompt.replace(": ", ":\n\n"), p.response) for p in PAIRS]
    assert read_jsonl(alpaca) == alpaca_pairs
    assert read_jsonl(messages) == PAIRS
    assert load_pairs(completion) == PAIRS
    assert read_table(csv_file, template="Classify: {text}", response_column="label", label_names=names) == PAIRS
    assert load_pairs(tsv_file, template="Classify: {text}", response_column="label") == PAIRS


@pytest.mark.parametrize("line, message", [
    ('{"prompt": "hi"', "t.jsonl:2: malformed JSON"),
    ('{"prompt": "hi", "completion": ""}', "t.jsonl:2: 'completion' is missing or empty"),
    ('{"foo": 1}', "t.jsonl:2: unknown record format"),
    ('{"messages": [{"role": "user", "content": "a"}]}', "t.jsonl:2: 'messages' must be one user turn"),
    ('[1, 2]', "t.jsonl:2: expected a JSON object"),
])
def test_malformed_lines_name_file_and_line(tmp_path, line, message):
    path = write_lines(tmp_path / "t.jsonl", [{"prompt": "ok", "completion": "fine"}, line])
    with pytest.raises(SftscopeError, match=message):
        read_jsonl(path)


def test_table_errors(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("text,label\nhello,7\n", encoding="utf-8")
    with pytest.raises(SftscopeError, match="t.csv:2: label index 7 out of range"):
        read_table(path, label_names=["a", "b"])
    with pytest.raises(SftscopeError, match="missing column 'sentence'"):
        read_table(path, prompt_column="sentence", response_column="label")
    path.write_text("text,label\nhello,a,extra\n", encoding="utf-8")
    with pytest.raises(SftscopeError, match="t.csv:2: wrong number of fields"):
        read_table(path)


def test_splits(tmp_path):
    path = write_lines(tmp_path / "c.jsonl", [{"prompt": f"p {i}", "completion": "x"} for i in range(10)])
    train, validation, test = load_splits(path, test_ratio=0.3, validation_ratio=0.2, seed=1)
    assert (len(train), len(validation), len(test)) == (5, 2, 3)
    assert not set(train) & set(test) and not set(train) & set(validation) and not set(validation) & set(test)
    assert (train, validation, test) == load_splits(path, test_ratio=0.3, validation_ratio=0.2, seed=1)
    assert load_splits(path, test_ratio=0.3, validation_ratio=0.2, seed=2) != (train, validation, test)
    # the same test split whatever the validation ratio: validation is drawn after it
    assert load_splits(path, test_ratio=0.3, validation_ratio=0.1, seed=1).test == test
    other = write_lines(tmp_path / "v.jsonl", [{"prompt": f"v {i}", "completion": "x"} for i in range(4)])
    own = load_splits(path, validation=other, test_ratio=0.3, seed=1)
    assert own.validation == load_pairs(other) and own.test == test and len(own.train) == 7
    with pytest.raises(SftscopeError, match="leaving none to train on"):
        load_splits(path, test_ratio=0.5, validation_ratio=0.5)
    empty = write_lines(tmp_path / "e.jsonl", [])
    with pytest.raises(SftscopeError, match="no examples"):
        load_splits(empty)


def test_a_validation_split_too_small_to_decide_on(tmp_path):
    path = write_lines(tmp_path / "c.jsonl", [{"prompt": f"p {i}", "completion": "x"} for i in range(12)])
    from sftscope.data import split_notes

    settings = build(DataSettings, {"train": str(path), "max_train_examples": None, "validation_ratio": 0.1}, "data")
    assert "the validation split has only 1 examples, so its accuracy moves in steps of 100 points" in \
        " ".join(split_notes(split_pairs(settings)))
    splits = split_pairs(build(DataSettings, {"train": str(path), "max_train_examples": None,
                                              "validation_ratio": 0.34}, "data"))
    notes = split_notes(splits)
    assert notes[0] == "data: 6 train / 4 validation / 2 test examples"
    assert "validation split has only 4 examples" in notes[1]


def test_test_rows_seen_in_training_are_said(tmp_path):
    from sftscope.data import split_notes

    path = write_lines(tmp_path / "same.jsonl", [{"prompt": "the very same prompt", "completion": "joy"}] * 12)
    splits = split_pairs(build(DataSettings, {"train": str(path), "max_train_examples": None}, "data"))
    notes = " ".join(split_notes(splits))
    assert "2 of 2 test examples repeat a training prompt" in notes and "validation examples repeat" in notes


def test_embedded_emotions_data_set():
    train, validation, test = load_splits("emotions")
    assert len(train) == 320 and len(validation) == 60 and len(test) == 60
    assert {p.response for p in train} == {"joy", "sadness", "anger", "fear", "surprise"}
    assert not {p.prompt for p in train} & {p.prompt for p in test}


LABELS = {
    "emotions": {"joy", "sadness", "anger", "fear", "surprise"},
    "tickets": {"billing", "shipping", "technical", "account", "returns"},
}


@pytest.mark.parametrize("name", sorted(LABELS))
def test_embedded_data_sets_have_three_disjoint_splits(name):
    assert name in EMBEDDED_DATASETS
    splits = {split: embedded_split(name, split) for split in ("train", "validation", "test")}
    assert {split: len(pairs) for split, pairs in splits.items()} == {"train": 320, "validation": 60, "test": 60}
    for pairs in splits.values():
        assert {p.response for p in pairs} == LABELS[name]
        assert len({p.prompt for p in pairs}) == len(pairs)
    prompts = {split: {p.prompt for p in pairs} for split, pairs in splits.items()}
    assert not prompts["train"] & prompts["validation"]
    assert not prompts["train"] & prompts["test"]
    assert not prompts["validation"] & prompts["test"]
    # Test labels are clean and balanced; train and validation carry some label noise.
    assert Counter(p.response for p in splits["test"]) == {label: 12 for label in LABELS[name]}
    assert load_splits(name) == (splits["train"], splits["validation"], splits["test"])


def test_unknown_embedded_data_set_or_split():
    with pytest.raises(SftscopeError, match="unknown embedded data set 'nope'.*emotions, tickets"):
        embedded_split("nope", "train")
    with pytest.raises(SftscopeError, match="unknown split 'dev'.*train, validation, test"):
        embedded_split("emotions", "dev")
    with pytest.raises(SftscopeError, match="embedded data set with splits"):
        load_pairs("tickets")


# --------------------------------------------------------------------------- fixtures in tests/data, one per format

GO_JOY = "Can't wait for the trip, we finally booked it!"
FIXTURES = {
    "alpaca.jsonl": ({}, [
        Pair("Classify the emotion of this comment.\n\nWe won the game tonight!", "joy"),
        Pair("Name the capital of France.", "Paris"),
    ]),
    "dolly.jsonl": ({}, [
        Pair("Who wrote the play Hamlet?", "William Shakespeare"),
        Pair("How many moons does the planet have?\n\nMars has two small moons, Phobos and Deimos.", "Two"),
    ]),
    "messages.jsonl": ({}, [
        Pair("Classify the emotion of this comment: my flight got cancelled again", "anger"),
        Pair("Classify the emotion of this comment: we adopted a puppy", "joy", "Answer with one word."),
    ]),
    "prompt_completion.jsonl": ({}, [
        Pair("Classify the emotion of this comment: we won the game", "joy"),
        Pair("Classify the emotion of this comment: my flight got cancelled", "anger"),
    ]),
    "table.csv": ({}, [Pair("we won the game", "joy"), Pair("my flight got cancelled, again", "anger")]),
    "table.tsv": ({"template": "Classify: {text}", "response_column": "label"}, PAIRS),
    "headerless.tsv": ({"template": "Classify: {0}", "response_column": 1, "label_names": ["joy", "anger"]}, PAIRS),
    "goemotions_train.tsv": ({"prompt_column": 0, "response_column": 1, "label_names": str(GO_LABELS)}, [
        Pair("That was the best concert I have been to in years.", "admiration"),
        Pair("Thanks so much, you saved my whole afternoon!", "gratitude"),
        Pair("I have no idea what this chart is supposed to show.", "confusion"),
        Pair("The bus is late every single morning.", "annoyance"),
        Pair("Okay.", "neutral"),
        Pair("I miss my grandmother so much today.", "sadness"),
    ]),
}


@pytest.mark.parametrize("name", sorted(FIXTURES))
def test_each_fixture_loads_to_its_pairs(name):
    options, expected = FIXTURES[name]
    assert load_pairs(DATA / name, **options) == expected


def test_dolly_with_and_without_context(tmp_path):
    path = write_lines(tmp_path / "d.jsonl", [
        {"instruction": "Summarise.", "context": "A long text.", "response": "Short.", "category": "summarization"},
        {"instruction": "Say hi.", "context": "  ", "response": "Hi.", "category": "open_qa"},
        {"instruction": "Say bye.", "response": "Bye."},
    ])
    expected = [Pair("Summarise.\n\nA long text.", "Short."), Pair("Say hi.", "Hi."), Pair("Say bye.", "Bye.")]
    assert read_jsonl(path) == expected
    # alpaca still needs 'output', Dolly 'response'
    bad = write_lines(tmp_path / "b.jsonl", [{"instruction": "Say hi.", "context": "x"}])
    with pytest.raises(SftscopeError, match="b.jsonl:1: 'output' is missing or empty"):
        read_jsonl(bad)


def test_goemotions_multi_label_choices(caplog):
    options = {"prompt_column": 0, "response_column": 1, "label_names": str(GO_LABELS)}
    with caplog.at_level(logging.WARNING, logger="sftscope.data"):
        skipped = load_pairs(DATA / "goemotions_train.tsv", **options)
    assert len(skipped) == 6
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [f"{DATA / 'goemotions_train.tsv'}: skipped 2 multi-label rows (multi_label: skip)"]
    first = load_pairs(DATA / "goemotions_train.tsv", multi_label="first", **options)
    joined = load_pairs(DATA / "goemotions_train.tsv", multi_label="join", **options)
    assert len(first) == len(joined) == 8
    assert first[2] == Pair("Wait, they cancelled the show again? Unbelievable.", "anger")
    assert joined[2] == Pair("Wait, they cancelled the show again? Unbelievable.", "anger, surprise")
    assert (first[6], joined[6]) == (Pair(GO_JOY, "excitement"), Pair(GO_JOY, "excitement, joy, optimism"))
    assert [p for i, p in enumerate(joined) if i not in (2, 6)] == skipped


def test_only_multi_label_rows_means_no_examples(tmp_path):
    path = tmp_path / "m.tsv"
    path.write_text("a\t1, 2\tx\n", encoding="utf-8")
    with pytest.raises(SftscopeError, match=r"m.tsv: no examples \(1 multi-label rows skipped\)"):
        read_table(path, prompt_column=0, response_column=1, label_names=["a", "b", "c"])


def test_split_pairs_reads_a_config_mapping():
    settings = build(DataSettings, {
        "train": str(DATA / "goemotions_train.tsv"), "prompt_column": 0, "response_column": 1,
        "label_names": str(GO_LABELS), "multi_label": "join", "test_ratio": 0.25, "validation_ratio": 0.25,
        "max_train_examples": None,
    }, "data")
    train, validation, test = split_pairs(settings)
    assert len(train) == 4 and len(validation) == 2 and len(test) == 2
    assert set(train + validation + test) == set(load_pairs(DATA / "goemotions_train.tsv", **{
        "prompt_column": 0, "response_column": 1, "label_names": str(GO_LABELS), "multi_label": "join"}))


def test_embedded_split_by_name():
    assert load_pairs("tickets:validation") == embedded_split("tickets", "validation")


# --------------------------------------------------------------------------- one mapping, every format

RECORDS = [
    {"review": "great movie", "stars": 2, "persona": "You rate films."},
    {"review": "terrible day", "stars": 0, "persona": ""},
]
MAPPING = {"template": "Rate: {review}", "response_column": "stars", "system_column": "persona",
           "label_names": ["bad", "ok", "good"]}
MAPPED = [Pair("Rate: great movie", "good", "You rate films."), Pair("Rate: terrible day", "bad")]


def write_parquet(path, rows):
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def test_one_mapping_reads_jsonl_csv_tsv_and_parquet_alike(tmp_path):
    jsonl = write_lines(tmp_path / "r.jsonl", RECORDS)
    csv_file = tmp_path / "r.csv"
    csv_file.write_text("review,stars,persona\ngreat movie,2,You rate films.\nterrible day,0,\n", encoding="utf-8")
    tsv_file = tmp_path / "r.tsv"
    tsv_file.write_text("great movie\t2\tYou rate films.\nterrible day\t0\t\n", encoding="utf-8")
    parquet = write_parquet(tmp_path / "r.parquet", RECORDS)
    for path in (jsonl, csv_file, parquet):
        assert load_pairs(path, **MAPPING) == MAPPED, path
    positions = {"template": "Rate: {0}", "response_column": 1, "system_column": 2,
                 "label_names": MAPPING["label_names"]}
    assert load_pairs(tsv_file, **positions) == MAPPED
    assert load_pairs(parquet, **positions) == MAPPED  # positions in a record follow its column order
    plain = {"prompt_column": "review", "response_column": "stars"}
    numbers_as_text = [Pair("great movie", "2"), Pair("terrible day", "0")]
    assert read_parquet(parquet, **plain) == read_jsonl(jsonl, **plain) == numbers_as_text


def test_a_template_field_may_be_empty_if_another_is_not(tmp_path):
    path = write_lines(tmp_path / "t.jsonl", [
        {"q": "Say hi.", "c": "", "a": "Hi."}, {"q": "Sum up.", "c": "Text.", "a": "T."},
    ])
    mapping = {"template": "{q}\n\n{c}", "response_column": "a"}
    assert read_jsonl(path, **mapping) == [Pair("Say hi.\n\n", "Hi."), Pair("Sum up.\n\nText.", "T.")]


def test_jsonl_with_other_field_names(tmp_path):
    path = write_lines(tmp_path / "q.jsonl", [
        {"question": "2+2?", "answer": 4, "id": 1}, {"question": "Sky?", "answer": "blue"},
    ])
    expected = [Pair("2+2?", "4"), Pair("Sky?", "blue")]
    assert read_jsonl(path, prompt_column="question", response_column="answer") == expected


def test_parquet_records_are_recognised_without_a_mapping(tmp_path):
    rows = [json.loads(line) for line in (DATA / "dolly.jsonl").read_text(encoding="utf-8").splitlines()]
    assert load_pairs(write_parquet(tmp_path / "d.parquet", rows)) == FIXTURES["dolly.jsonl"][1]
    rows = [{"prompt": "a", "completion": "b"}, {"prompt": "c", "completion": None}]
    with pytest.raises(SftscopeError, match=re.escape("c.parquet: row 2: 'completion' is missing or empty")):
        load_pairs(write_parquet(tmp_path / "c.parquet", rows))


def test_hub_rows_go_through_the_mapping(monkeypatch):
    datasets = pytest.importorskip("datasets")
    rows = [{"sentence": "we won", "label": 0}, {"sentence": "", "label": 1}]
    monkeypatch.setattr(datasets, "load_dataset", lambda name, split: rows if split == "validation" else [])
    mapping = {"prompt_column": "sentence", "response_column": "label", "label_names": ["joy", "anger"]}
    with pytest.raises(SftscopeError, match=re.escape("user/set: row 2: 'sentence' is missing or empty")):
        load_pairs("user/set:validation", **mapping)
    rows[1]["sentence"] = "lost again"
    assert load_pairs("user/set:validation", **mapping) == [Pair("we won", "joy"), Pair("lost again", "anger")]


# --------------------------------------------------------------------------- bad inputs: one line, file and line

LONG = "x" * (MAX_LINE_BYTES + 1)
OK_JSON = b'{"prompt": "ok", "completion": "fine"}\n'
GO = {"prompt_column": 0, "response_column": 1, "label_names": str(GO_LABELS)}


@pytest.mark.parametrize("name, content, options, fragment", [
    ("t.jsonl", OK_JSON + b'{"prompt": "caf\xe9", "completion": "x"}\n', {},
     "t.jsonl:2: not UTF-8 (byte 0xe9 at byte 16"),
    ("t.csv", b"text,label\nok,joy\nno\xff good,joy\n", {}, "t.csv:3: not UTF-8 (byte 0xff at byte 3"),
    ("t.jsonl", OK_JSON + f'{{"prompt": "{LONG}", "completion": "x"}}\n'.encode(), {},
     f"t.jsonl:2: line longer than {MAX_LINE_BYTES} bytes"),
    ("t.csv", f"text,label\n{LONG},joy\n".encode(), {}, f"t.csv:2: line longer than {MAX_LINE_BYTES} bytes"),
    ("t.csv", f'text,label\n"{LONG[:600_000]}\n{LONG[:600_000]}",joy\n'.encode(), {},
     "t.csv:3: field larger than field limit"),
    ("t.jsonl", OK_JSON + b'{"prompt": "hi"\n', {}, "t.jsonl:2: malformed JSON"),
    ("t.jsonl", b"\n" + OK_JSON + b'"just text"\n', {}, "t.jsonl:3: expected a JSON object, got str"),
    ("t.jsonl", b'{"question": "q", "answer": "a"}\n{"question": "q"}\n',
     {"prompt_column": "question", "response_column": "answer"},
     "t.jsonl:2: missing field 'answer' (fields: question)"),
    ("t.csv", b"text,label\nhello,joy\n", {"prompt_column": "text", "response_column": "answer"},
     "t.csv:1: missing column 'answer' (columns: text, label)"),
    ("t.csv", b"text,label\nhello,joy\n", {"template": "Classify: {txet}", "response_column": "label"},
     "t.csv:2: template names unknown field {txet} (fields: text, label)"),
    ("t.tsv", b"hello\t1\n", {"template": "{0} {text}", "response_column": 1},
     "t.tsv:1: template names unknown field {text} (a header-less row: positions 0-1)"),
    ("t.tsv", b"fine\t3\tid1\nbad\t3,28\tid2\n", GO, "t.tsv:2: label index 28 out of range (0-27)"),
    ("t.tsv", b"fine\t3\tid1\n\nbad\t3\n", GO, "t.tsv:3: wrong number of fields (2; the first row has 3)"),
    ("t.csv", b"text,label\nhello,a,extra\n", {}, "t.csv:2: wrong number of fields (3; the header has 2)"),
    ("t.csv", b'text,label\n"two\nlines",joy\n ,anger\n', {}, "t.csv:4: 'text' is missing or empty"),
    ("t.tsv", b"hello\t\tx\n", GO, "t.tsv:1: column 1 is missing or empty"),
    ("t.parquet", b"PAR1 but not really", {}, "t.parquet: not a valid Parquet file"),
    ("t.xml", b"<data/>", {}, "t.xml: unknown data file type '.xml'"),
    ("t.jsonl", b"\n  \n", {}, "t.jsonl: no examples"),
    ("t.tsv", b"a\t1\n", {"prompt_column": "text", "response_column": 1},
     "t.tsv: integer columns mean a table without a header"),
    ("t.csv", b"text,label\nhello,joy\n", {"template": "Classify: {text}"},
     "a column mapping needs response_column (set: template)"),
    ("t.csv", b"text,label\nhello,joy\n", {"template": "Classify", "response_column": "label"}, "names no field"),
    ("t.jsonl", b'["hello", "joy"]\n', {"prompt_column": 0, "response_column": 1},
     "t.jsonl:1: expected a JSON object, got list"),
    ("t.jsonl", b'{"q": "hi", "a": "yo", "s": {"x": 1}}\n',
     {"prompt_column": "q", "response_column": "a", "system_column": "s"},
     "t.jsonl:1: 's' must be text or a number, got dict"),
    ("t.jsonl", b'{"q": " ", "c": "", "a": "yo"}\n', {"template": "{q}\n\n{c}", "response_column": "a"},
     "t.jsonl:1: 'q', 'c' are all missing or empty"),
])
def test_bad_inputs_are_one_line_naming_file_and_line(tmp_path, name, content, options, fragment):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(SftscopeError, match=re.escape(fragment)) as caught:
        load_pairs(path, **options)
    message = str(caught.value)
    assert "\n" not in message
    if name in fragment:
        assert str(path) in message  # the full path, not just the name
