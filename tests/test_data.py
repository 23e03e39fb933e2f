import json
from collections import Counter

import pytest

from sftscope import SftscopeError
from sftscope.data import EMBEDDED_DATASETS, Pair, embedded_split, load_pairs, load_splits, read_jsonl, read_table

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
    assert read_table(csv_file, template="Classify: {text}", label_names=names) == PAIRS
    assert load_pairs(tsv_file, template="Classify: {text}") == PAIRS


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
        read_table(path, prompt_column="sentence")
    path.write_text("text,label\nhello,a,extra\n", encoding="utf-8")
    with pytest.raises(SftscopeError, match="t.csv:2: wrong number of fields"):
        read_table(path)


def test_splits(tmp_path):
    path = write_lines(tmp_path / "c.jsonl", [{"prompt": f"p {i}", "completion": "x"} for i in range(10)])
    train, test = load_splits(path, test_ratio=0.3, seed=1)
    assert len(train) == 7 and len(test) == 3 and not set(train) & set(test)
    assert (train, test) == load_splits(path, test_ratio=0.3, seed=1)
    assert load_splits(path, test_ratio=0.3, seed=2) != (train, test)
    empty = write_lines(tmp_path / "e.jsonl", [])
    with pytest.raises(SftscopeError, match="no examples"):
        load_splits(empty)


def test_embedded_emotions_data_set():
    train, test = load_splits("emotions")
    assert len(train) == 240 and len(test) == 60
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
    assert {split: len(pairs) for split, pairs in splits.items()} == {"train": 240, "validation": 60, "test": 60}
    for pairs in splits.values():
        assert {p.response for p in pairs} == LABELS[name]
        assert len({p.prompt for p in pairs}) == len(pairs)
    prompts = {split: {p.prompt for p in pairs} for split, pairs in splits.items()}
    assert not prompts["train"] & prompts["validation"]
    assert not prompts["train"] & prompts["test"]
    assert not prompts["validation"] & prompts["test"]
    # Test labels are clean and balanced; train and validation carry some label noise.
    assert Counter(p.response for p in splits["test"]) == {label: 12 for label in LABELS[name]}
    assert load_splits(name) == (splits["train"], splits["test"])


def test_unknown_embedded_data_set_or_split():
    with pytest.raises(SftscopeError, match="unknown embedded data set 'nope'.*emotions, tickets"):
        embedded_split("nope", "train")
    with pytest.raises(SftscopeError, match="unknown split 'dev'.*train, validation, test"):
        embedded_split("emotions", "dev")
    with pytest.raises(SftscopeError, match="embedded data set with splits"):
        load_pairs("tickets")
