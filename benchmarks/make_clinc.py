"""Build the CLINC150 domain-classification splits used by the benchmarks.

The source is the data set of Larson et al. (2019), "An Evaluation Dataset for
Intent Classification and Out-of-Scope Prediction" (EMNLP-IJCNLP 2019),
published under Creative Commons Attribution 3.0 Unported (CC BY 3.0) at

    https://github.com/clinc/oos-eval
    commit 828f8093932c8fe6ca7936c3d2e52903b1c523de

Two raw files of that repository are needed: ``data/data_full.json`` (the
queries, as [text, intent] pairs in "train", "val" and "test" lists) and
``data/domains.json`` (which of the 150 intents belong to which of the 10
domains). The out-of-scope lists are not used.

Each query gets the label of its intent's domain. Five clearly separate domains
are kept (raw name -> label):

    travel             -> travel
    kitchen_and_dining -> food
    auto_and_commute   -> commute
    work               -> work
    small_talk         -> small talk

Left out: banking and credit_cards (close to each other and to customer
support), home, utility and meta (grab-bags of assistant commands).

The official splits are kept apart: our test set is drawn from the raw "test"
list, validation from "val", train from "train". Each split has the same number
of queries per label, sampled with a fixed seed; a text (compared lowercased,
whitespace collapsed) is never used twice, within or across splits. Texts are
left unchanged apart from whitespace normalisation.

    python benchmarks/make_clinc.py data_full.json domains.json [--out benchmarks/data]

writes clinc_train.jsonl (320), clinc_validation.jsonl (60), clinc_test.jsonl (60).
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

SEED = 20190
INSTRUCTION = "Which topic does this voice-assistant request belong to? "
DOMAINS = {
    "travel": "travel",
    "kitchen_and_dining": "food",
    "auto_and_commute": "commute",
    "work": "work",
    "small_talk": "small talk",
}
# (output split, raw list, examples per label), in the order they are drawn.
SPLITS = [("test", "test", 12), ("validation", "val", 12), ("train", "train", 64)]


def normalise(text: str) -> str:
    return " ".join(text.split())


def build(data: dict, domains: dict, seed: int = SEED) -> dict[str, list[dict]]:
    intent_label = {intent: DOMAINS[dom] for dom, intents in domains.items()
                    if dom in DOMAINS for intent in intents}
    rng = random.Random(seed)
    used: set[str] = set()
    out = {}
    for name, raw, per_label in SPLITS:
        pools: dict[str, list[str]] = {label: [] for label in DOMAINS.values()}
        for text, intent in data[raw]:
            if intent in intent_label:
                pools[intent_label[intent]].append(normalise(text))
        rows = []
        for label in sorted(pools):
            pool = pools[label]
            rng.shuffle(pool)
            taken = 0
            for text in pool:
                key = text.lower()
                if key in used:
                    continue
                used.add(key)
                rows.append({"prompt": INSTRUCTION + text, "completion": label})
                taken += 1
                if taken == per_label:
                    break
            if taken < per_label:
                raise SystemExit(f"{raw}: only {taken} distinct texts for {label!r}")
        rng.shuffle(rows)
        out[name] = rows
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("data_full", type=Path, help="data/data_full.json of clinc/oos-eval")
    ap.add_argument("domains", type=Path, help="data/domains.json of clinc/oos-eval")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "data")
    ap.add_argument("--seed", type=int, default=SEED)
    args = ap.parse_args()
    data = json.loads(args.data_full.read_text(encoding="utf-8"))
    domains = json.loads(args.domains.read_text(encoding="utf-8"))
    args.out.mkdir(parents=True, exist_ok=True)
    for name, rows in build(data, domains, args.seed).items():
        path = args.out / f"clinc_{name}.jsonl"
        with path.open("w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
        print(f"{path}: {len(rows)} examples")


if __name__ == "__main__":
    main()
