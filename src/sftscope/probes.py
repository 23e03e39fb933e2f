"""Probe samples: drawn once per run from train and test, their players chosen on the model before SFT, frozen.

The same sample keeps the same players at every checkpoint and in every model,
so its interactions are comparable across both (METHOD section 1).
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass
from pathlib import Path

from .data import Pair
from .players import Players
from .store import read_json, write_json


@dataclass
class Probe:
    sample: str
    split: str
    prompt: str
    response: str
    players: Players


def draw_probes(train: list[Pair], test: list[Pair], count: int, seed: int) -> list[tuple[str, str, Pair]]:
    """``count`` seeded samples from each split: (sample id, split, pair)."""
    rng = random.Random(seed)
    chosen = []
    for split, pairs in (("train", train), ("test", test)):
        for index in sorted(rng.sample(range(len(pairs)), min(count, len(pairs)))):
            chosen.append((f"{split}-{index:04d}", split, pairs[index]))
    return chosen


def choose_probes(model, tokenizer, train: list[Pair], test: list[Pair], *, count: int, n_players: int,
                  seed: int) -> list[Probe]:
    """Draw the probe samples and choose each one's players on ``model`` (the model before SFT)."""
    from .extract import select_players  # noqa: PLC0415 - torch only when extracting

    probes = []
    for sample, split, pair in draw_probes(train, test, count, seed):
        players = select_players(model, tokenizer, pair.prompt, pair.response, n_players, allow_fewer=True)
        probes.append(Probe(sample, split, pair.prompt, pair.response, players))
    return probes


def save_probes(path: Path, probes: list[Probe]) -> None:
    write_json(path, [{**asdict(p), "players": asdict(p.players)} for p in probes])


def load_probes(path: Path) -> list[Probe]:
    out = []
    for item in read_json(path):
        players = Players(**{k: tuple(tuple(x) if isinstance(x, list) else x for x in v) for k, v in item["players"].items()})
        out.append(Probe(item["sample"], item["split"], item["prompt"], item["response"], players))
    return out
