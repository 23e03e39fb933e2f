"""Writes the embedded emotion data set (src/sftscope/datasets/emotions_*.jsonl).

Short first-person comments, each with one of five emotions, composed from
hand-written events, openers and endings, seeded so the files are reproducible:
320 train, 60 validation and 60 test comments (64/12/12 per label). The three
splits share no event, opener or ending; train and validation labels are noisy
(15% flipped to another label, like annotator disagreement), test labels are clean.
Validation is built last from its own material and its own random stream, so the
train and test files are the same as before it existed; the last 80 training
comments (unused combinations of the training material, their own random stream)
were appended for the stopping benchmark's 256-example runs, so the first 240
lines are unchanged too.

    python tools/make_emotions.py
"""

import json
import random
from pathlib import Path

PROMPT = "Classify the emotion of this comment: {text}"

EVENTS = {
    "joy": [
        "we finally won the championship game", "my sister gave birth to a healthy baby girl",
        "I passed my driving test on the first try", "our team got the big contract",
        "the concert last night was the best of my life", "my best friend is coming home for the holidays",
        "I got the job I have wanted for years", "the garden is blooming after all that work",
        "grandma loved the cake we baked for her", "we adopted a puppy this morning",
        "my paper was accepted at the conference", "the kids laughed all through the picnic",
    ],
    "sadness": [
        "my old dog passed away this morning", "I miss my father more every day",
        "nobody came to my birthday party", "we had to close the shop after twenty years",
        "my best friend moved across the ocean", "the letter said they will not renew my contract",
        "I lost the ring my mother gave me", "the house feels so empty since she left",
        "our team lost the final in the last minute", "I spent the whole weekend alone again",
        "the doctor said grandpa will not recover", "my plants all died while I was away",
    ],
    "anger": [
        "my flight got cancelled again without any notice", "the landlord kept our deposit for no reason",
        "someone scratched my car and drove off", "the bank charged me twice for the same thing",
        "my coworker took credit for my project", "the repair man never showed up after three calls",
        "they sold my personal data to advertisers", "the neighbours played loud music until four",
        "customer service hung up on me twice", "the referee ignored a clear foul",
        "the company raised prices and cut the service", "he lied to my face about the money",
    ],
    "fear": [
        "I heard footsteps in the empty house last night", "the doctor called about my test results",
        "the storm is getting closer and the power is out", "my child did not come home after school",
        "there was a strange man following me to the station", "the plane shook hard during the landing",
        "I have to speak in front of a thousand people tomorrow", "the brakes failed on the mountain road",
        "the river is rising toward our street", "I found a letter threatening my family",
        "the lump is still there after two weeks", "the smoke alarm went off in the middle of the night",
    ],
    "surprise": [
        "my quiet neighbour turned out to be a famous singer", "the package contained a ticket to Japan",
        "my old teacher recognised me after thirty years", "it snowed in the middle of July",
        "the shy intern won the national chess title", "my parents announced they are moving to a boat",
        "the test I thought I failed came back with full marks", "a stranger paid for all our groceries",
        "the old painting in the attic is worth a fortune", "my brother showed up at my door unannounced",
        "the tiny cafe beat every big restaurant in the review", "the cat opened the fridge by itself",
    ],
}
OPENERS = {
    "joy": ["Honestly,", "Best day ever:", "Still smiling because", "I can hardly believe it,", "Yes!"],
    "sadness": ["Honestly,", "It hurts that", "I keep thinking that", "Quiet evening,", "Sigh,"],
    "anger": ["Honestly,", "Unbelievable:", "I am done,", "Again?", "Seriously,"],
    "fear": ["Honestly,", "I am shaking,", "Please help,", "Late night,", "I cannot sleep,"],
    "surprise": ["Honestly,", "Wait,", "No way,", "Out of nowhere,", "Plot twist:"],
}
ENDINGS = {
    "joy": ["and everyone cheered.", "and I could dance all night.", "what a wonderful feeling!", "life is good.", "I feel on top of the world."],
    "sadness": ["and I cried all evening.", "and nothing feels the same.", "I feel so empty.", "it is hard to go on.", "my heart is heavy tonight."],
    "anger": ["and I am furious.", "this is outrageous!", "I want my money back.", "how dare they!", "I am fuming right now."],
    "fear": ["and I am terrified.", "what if it gets worse?", "my hands are still trembling.", "I am so scared.", "I keep checking the locks."],
    "surprise": ["who would have guessed?", "I did not see that coming!", "I am still stunned.", "what a twist!", "my jaw literally dropped."],
}

# The validation split's own material: no event, opener or ending of train or test.
VALIDATION_EVENTS = {
    "joy": [
        "my daughter took her first steps in the kitchen", "the whole family made it to the reunion",
        "I finished my first marathon before noon", "the clinic told us the treatment worked",
        "our little band sold out the club downtown",
    ],
    "sadness": [
        "the last of my childhood friends stopped calling", "we sold the farm my grandfather built",
        "my cat has been missing for a week now", "I found her old letters in a drawer",
        "the school where I taught for years is shutting down",
    ],
    "anger": [
        "the airline lost my suitcase and then blamed me", "my manager cancelled my leave the night before",
        "the builder took our money and vanished", "somebody parked across my driveway all day",
        "the council towed my car from my own street",
    ],
    "fear": [
        "someone tried to open my front door at midnight", "the biopsy results come back on Friday",
        "the earthquake alert just went off on my phone", "I got lost on the hike and it is getting dark",
        "a truck swerved straight at me on the bridge",
    ],
    "surprise": [
        "my grandfather secretly learned to skateboard", "the lottery ticket I forgot about was a winner",
        "I learned I have a cousin in Brazil nobody told me about", "the broken radio started playing on its own",
        "our boring maths teacher turned out to be a stunt pilot",
    ],
}
VALIDATION_OPENERS = {
    "joy": ["Pure happiness:", "Guess what,", "Grinning ear to ear,"],
    "sadness": ["Feeling low,", "Lonely again,", "Tears again,"],
    "anger": ["Absolutely livid:", "Are you kidding me?", "Enough is enough,"],
    "fear": ["My heart is racing,", "Panicking here,", "Somebody help,"],
    "surprise": ["Whoa,", "You will not believe this:", "Imagine my face:"],
}
VALIDATION_ENDINGS = {
    "joy": ["and I keep laughing.", "my heart is so full.", "I am over the moon."],
    "sadness": ["and the silence is unbearable.", "I miss how things were.", "nothing can fill that gap."],
    "anger": ["and I am boiling.", "this is a disgrace!", "someone will pay for this."],
    "fear": ["and I cannot stop shaking.", "I am afraid to close my eyes.", "what if nobody comes?"],
    "surprise": ["and I had no idea.", "I never expected that!", "can you believe it?"],
}


def compose(opener: str, event: str, ending: str) -> str:
    joined = f"{event} {ending}" if ending.startswith("and ") else f"{event}, {ending}"
    return PROMPT.format(text=f"{opener} {joined}")


def validation_rows() -> tuple[list[dict], int]:
    """12 comments per label from the validation material, 15% of labels flipped (own seed)."""
    for label in EVENTS:
        for new, old in ((VALIDATION_EVENTS, EVENTS), (VALIDATION_OPENERS, OPENERS), (VALIDATION_ENDINGS, ENDINGS)):
            shared = set(new[label]) & {text for texts in old.values() for text in texts}
            assert not shared, f"validation material of {label} also in train/test: {shared}"
    rng = random.Random(2027)
    rows = []
    for label, events in VALIDATION_EVENTS.items():
        combos = [(o, e, d) for o in VALIDATION_OPENERS[label] for e in events for d in VALIDATION_ENDINGS[label]]
        rng.shuffle(combos)
        rows += [{"prompt": compose(*combo), "completion": label} for combo in combos[:12]]
    labels = sorted(EVENTS)
    noisy = rng.sample(range(len(rows)), round(0.15 * len(rows)))
    for index in noisy:
        rows[index]["completion"] = rng.choice([label for label in labels if label != rows[index]["completion"]])
    rng.shuffle(rows)
    return rows, len(noisy)


APPENDED_PER_LABEL = 16


def appended_train_rows(unused: dict[str, list], labels: list[str]) -> list[dict]:
    """16 more training comments per label from unused training combinations, 15% noisy (own seed)."""
    rng = random.Random(2028)
    rows = []
    for label in sorted(unused):
        combos = list(unused[label])
        rng.shuffle(combos)
        rows += [{"prompt": compose(*combo), "completion": label} for combo in combos[:APPENDED_PER_LABEL]]
    for index in rng.sample(range(len(rows)), round(0.15 * len(rows))):
        rows[index]["completion"] = rng.choice([label for label in labels if label != rows[index]["completion"]])
    rng.shuffle(rows)
    return rows


def main() -> None:
    """The splits share no event, opener or ending: test needs generalisation, not recall."""
    rng = random.Random(2026)
    splits = {"train": [], "test": []}
    unused = {}  # label -> training combinations not drawn: material for the appended rows
    for label, events in EVENTS.items():
        ev, op, en = list(events), list(OPENERS[label]), list(ENDINGS[label])
        for items in (ev, op, en):
            rng.shuffle(items)
        parts = {"train": (ev[:9], op[:3], en[:3], 48), "test": (ev[9:], op[3:], en[3:], 12)}
        for split, (events_, openers, endings, count) in parts.items():
            combos = [(o, e, d) for o in openers for e in events_ for d in endings]
            rng.shuffle(combos)
            for combo in combos[:count]:
                splits[split].append({"prompt": compose(*combo), "completion": label})
            if split == "train":
                unused[label] = combos[count:]
    # Like GoEmotions, the training labels are noisy: annotators disagree. 15% of the
    # training comments carry another label; the test labels are clean. Memorising the
    # noisy ones is the overfitting SFT runs into.
    labels = sorted(EVENTS)
    noisy = rng.sample(range(len(splits["train"])), round(0.15 * len(splits["train"])))
    for index in noisy:
        row = splits["train"][index]
        row["completion"] = rng.choice([label for label in labels if label != row["completion"]])
    out = Path(__file__).resolve().parents[1] / "src" / "sftscope" / "datasets"
    out.mkdir(parents=True, exist_ok=True)
    for name, rows in splits.items():
        rng.shuffle(rows)
    splits["train"] += appended_train_rows(unused, labels)
    for name, rows in splits.items():
        with open(out / f"emotions_{name}.jsonl", "w", encoding="utf-8") as handle:
            for row in rows:
                handle.write(json.dumps(row) + "\n")
    validation, n_noisy_validation = validation_rows()
    seen = {row["prompt"] for rows in splits.values() for row in rows}
    assert not seen & {row["prompt"] for row in validation}, "a validation comment is also in train/test"
    with open(out / "emotions_validation.jsonl", "w", encoding="utf-8") as handle:
        for row in validation:
            handle.write(json.dumps(row) + "\n")
    print(f"wrote {len(splits['train'])} train ({len(noisy)} with noisy labels), {len(validation)} validation "
          f"({n_noisy_validation} with noisy labels) and {len(splits['test'])} test comments, labels {labels}")


if __name__ == "__main__":
    main()
