"""Probe samples: drawn once per run, their players chosen on the model before SFT, frozen.

Three splits: ``train`` and ``validation`` (the task: its held-out probes are
what the probe-based stopping rules see; no probe comes from the test split),
and ``general`` (prompts outside the task, answered by the base model: which of
its interactions SFT removes, preserves or replaces). The same sample keeps
the same players at every checkpoint and in every model, so its interactions
are comparable across both (METHOD section 1).
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass
from pathlib import Path

from .data import Pair
from .errors import SftscopeError
from .players import Players, usable_words
from .store import digest, read_json, write_json


@dataclass
class Probe:
    sample: str
    split: str
    prompt: str
    response: str
    players: Players


TASK_SPLITS = ("train", "validation")  # the probes of the task; "general" probes are outside it


def draw_probes(train: list[Pair], validation: list[Pair], count: int, seed: int) -> list[tuple[str, str, Pair]]:
    """``count`` seeded samples from each task split: (sample id, split, pair)."""
    rng = random.Random(seed)
    chosen = []
    for split, pairs in (("train", train), ("validation", validation)):
        for index in sorted(rng.sample(range(len(pairs)), min(count, len(pairs)))):
            chosen.append((f"{split}-{index:04d}", split, pairs[index]))
    return chosen


def draw_general(prompts: list[str], answers: list[str], count: int, n_players: int, seed: int,
                 kind: str = "words") -> list[tuple[str, str, Pair]]:
    """``count`` seeded general prompts with at least ``n_players`` usable words (the longest ones if too few),
    each paired with the base model's own answer: its first token is the target."""
    usable = [i for i, (p, a) in enumerate(zip(prompts, answers)) if a.strip() and usable_words(p, kind) >= n_players]
    if len(usable) < count:  # too few long prompts: the longest others, which then have fewer players
        rest = sorted((i for i, a in enumerate(answers) if a.strip() and i not in usable),
                      key=lambda i: (-usable_words(prompts[i], kind), i))
        usable += rest[: count - len(usable)]
    rng = random.Random(seed)
    picked = sorted(rng.sample(usable, min(count, len(usable))))
    return [(f"general-{i:04d}", "general", Pair(prompts[i], answers[i])) for i in picked]


def check_probe_words(train: list[Pair], validation: list[Pair], settings) -> dict[str, int]:
    """Probe prompts with fewer usable words than ``n_players``: refused unless ``allow_fewer`` (then returned).

    Counted on the text (words that are not stopwords), before any model is
    loaded; a tokenizer can only find fewer (two words sharing a token).
    """
    short = {}
    kind = getattr(settings, "players", "words")
    for sample, _, pair in draw_probes(train, validation, settings.samples_per_split, settings.seed):
        words = usable_words(pair.prompt, kind)
        if words < settings.n_players:
            short[sample] = words
    empty = sorted(sample for sample, words in short.items() if words == 0)
    if empty:
        raise SftscopeError(f"probe {empty[0]} has no usable word (only stopwords or punctuation), so it has no "
                            f"player to explain ({len(empty)} such probe prompt(s)): remove such rows from the data")
    if short and not settings.allow_fewer:
        fewest = min(short, key=short.get)
        total = 2 * settings.samples_per_split
        raise SftscopeError(
            f"analysis.n_players is {settings.n_players}, but {len(short)} of the probe prompts (of up to {total}) "
            f"have fewer usable words (fewest: {short[fewest]}, {fewest}): lower n_players, or set "
            "analysis.allow_fewer: true to use all their words"
        )
    return short


def choose_probes(model, tokenizer, train: list[Pair], validation: list[Pair], *, count: int, n_players: int,
                  seed: int, allow_fewer: bool = False,
                  general: list[tuple[str, str, Pair]] = (), kind: str = "words") -> list[Probe]:
    """Draw the task probes (and take the ``general`` ones) and choose each one's players on ``model`` (before SFT).

    A general probe with fewer usable words than ``n_players`` uses all of them.
    """
    from .extract import select_players  # noqa: PLC0415 - torch only when extracting

    probes = []
    for sample, split, pair in [*draw_probes(train, validation, count, seed), *general]:
        try:
            players = select_players(model, tokenizer, pair.prompt, pair.response, n_players,
                                     allow_fewer=allow_fewer or split == "general", kind=kind)
        except SftscopeError as exc:
            raise SftscopeError(f"probe {sample}: {exc}") from None
        probes.append(Probe(sample, split, pair.prompt, pair.response, players))
    return probes


def probe_inputs(*, model: str, train: list[Pair], validation: list[Pair], count: int, n_players: int, seed: int,
                 general: list[tuple[str, str, Pair]] = (), kind: str = "words") -> dict:
    """What a probe set is drawn from: when any of it changes, the probes are drawn again."""
    inputs = {"model": model, "data": digest([[asdict(p) for p in train], [asdict(p) for p in validation]]),
              "general": digest([[s, asdict(p)] for s, _, p in general]),
              "samples_per_split": count, "n_players": n_players, "seed": seed}
    if kind != "words":  # word players' probe sets of earlier versions stay valid
        inputs["players"] = kind
    return inputs


def save_probes(path: Path, probes: list[Probe], inputs: dict | None = None) -> None:
    write_json(path, {"inputs": inputs, "probes": [{**asdict(p), "players": asdict(p.players)} for p in probes]})


def stored_probe_inputs(path: Path) -> dict | None:
    """The inputs a stored probe set was drawn from (``None`` if there is none or it cannot be read)."""
    try:
        data = read_json(path)
    except (OSError, ValueError):
        return None
    return data.get("inputs") if isinstance(data, dict) else None


def load_probes(path: Path) -> list[Probe]:
    data = read_json(path)
    out = []
    for item in data["probes"] if isinstance(data, dict) else data:
        players = Players(**{k: tuple(tuple(x) if isinstance(x, list) else x for x in v) for k, v in item["players"].items()})
        out.append(Probe(item["sample"], item["split"], item["prompt"], item["response"], players))
    return out
