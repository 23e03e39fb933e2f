"""Writes the embedded support-ticket data set (src/sftscope/datasets/tickets_*.jsonl).

Short customer-support messages, each routed to one of five teams (billing,
shipping, technical, account, returns), composed from a hand-written opener, a
concrete issue and a closing, seeded so the files are reproducible: 320 train,
60 validation and 60 test messages (64/12/12 per team; the last 80 training
messages, unused combinations of the training material with their own random
stream, were appended for the stopping benchmark's 256-example runs, so the
first 240 lines are what they were). The three splits share
no issue, opener or closing. Some issues honestly touch two teams (a refund for a
returned item, a login problem after an app update), as real tickets do. Train
and validation labels are noisy (12% routed to another team, like agents who
disagree); test labels are clean.

    python tools/make_tickets.py
"""

import json
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from sftscope.players import STOPWORDS, WORD_PATTERN  # noqa: E402

PROMPT = "Which team should handle this customer message? {text}"

# 16 issues per team: 10 for train, 3 for validation, 3 for test (assigned at random).
ISSUES = {
    "billing": [
        "I was charged twice for my March invoice and the second payment is still pending",
        "my card was billed again after I cancelled the subscription last month",
        "the invoice shows a premium plan that I never signed up for",
        "I need a VAT invoice with our company address for the last order",
        "the promo code discount was not applied to my final bill",
        "my annual renewal went through at a higher price than the one advertised",
        "there is a foreign transaction fee on my statement that nobody mentioned",
        "I paid by bank transfer a week ago but my balance still shows as overdue",
        "I would like to switch from monthly to yearly billing and get credit for the unused month",
        "the refund for the jacket I returned has still not reached my credit card",
        "my direct debit failed once and now there is a late payment fee on my account",
        "you charged me for delivery although my order was over the free shipping threshold",
        "the receipt lists the wrong company name and our accountant cannot book it",
        "my gift card balance disappeared after I used it for a partial payment",
        "we were billed for three user seats but our team only has two people",
        "the payment page keeps declining my card although my bank says nothing is wrong",
    ],
    "shipping": [
        "the tracking number has not updated in six days",
        "the courier marked my parcel as delivered but nothing arrived at my door",
        "my package was left outside in the rain and the box is completely soaked",
        "I need to change the delivery address before the order leaves your warehouse",
        "the order was supposed to arrive on Tuesday and it is now a week late",
        "only two of the four boxes in my furniture order have arrived so far",
        "the driver never rang the bell and just left a missed delivery card",
        "customs is holding my parcel and asking me for import paperwork",
        "I want the delivery moved to Saturday because nobody is home on weekdays",
        "the parcel went to my old address even though I updated it in time",
        "the express shipping I paid extra for took just as long as standard delivery",
        "the box arrived crushed and the glass lamp inside is broken",
        "the pickup point near me closed down and my parcel is stuck there",
        "the label shows my order was sent to another country by mistake",
        "nobody can tell me which carrier is bringing my new sofa next week",
        "my order has been stuck in processing for ten days without being dispatched",
    ],
    "technical": [
        "the app crashes whenever I open the settings page on my tablet",
        "the website shows error 500 every time I try to check out my basket",
        "the export to spreadsheet button only produces an empty file",
        "push notifications stopped working after the latest phone system update",
        "the reporting dashboard takes over a minute to load every single morning",
        "syncing between the desktop and mobile app keeps duplicating my notes",
        "the smart thermostat drops off the home wifi network every night",
        "the photo editor refuses to upload any picture larger than two megabytes",
        "the search bar returns no results even for products shown on the homepage",
        "since the app update last week I get logged out every few minutes",
        "the printer driver from your download page fails to install on Windows",
        "video calls freeze for everyone as soon as more than five people join",
        "your API has returned a timeout error for every request since this morning",
        "the dark mode setting resets itself whenever I restart the program",
        "the firmware update bricked my speaker and now the light just blinks red",
        "the calendar integration shows all my meetings exactly one hour off",
    ],
    "account": [
        "I cannot reset my password because the reset email never arrives",
        "I want to change the email address linked to my customer profile",
        "please delete my account and all the personal data you keep about me",
        "someone logged into my account from another country late last night",
        "I need to add a second administrator to our company workspace",
        "my profile still shows my maiden name and I would like it updated",
        "the two-factor codes go to an old phone number I no longer have",
        "I accidentally created two separate accounts and want them merged into one",
        "my account got locked after too many failed login attempts this morning",
        "I want to move my paid subscription over to my colleague's profile",
        "I would like to download a copy of all data linked to my profile",
        "a former employee still has access to our shared company login",
        "the verification link in the welcome email says it has already expired",
        "my date of birth was entered wrong at sign up and I cannot edit it",
        "my son's profile needs parental controls switched on before his birthday",
        "I cannot sign in with Google anymore since my work email changed",
    ],
    "returns": [
        "the shoes I ordered are a size too small and I want to send them back",
        "I need a return label for the blender that arrived yesterday",
        "the wool sweater shrank after one gentle wash and I would like to exchange it",
        "I sent the headphones back two weeks ago and nobody has confirmed receiving them",
        "the wrong colour sofa cover was delivered and I want to swap it",
        "the return portal will not accept my order number no matter what I try",
        "I want to return an unopened birthday gift that came without a receipt",
        "I would rather return the winter coat in a store than post it back",
        "the dress does not fit and the thirty day return window closes on Friday",
        "I returned the laptop but only half of the purchase price was refunded",
        "the replacement kettle you sent leaks exactly like the first one did",
        "I want to exchange these medium jeans for the same pair in large",
        "the courier never collected my return parcel on the booked pickup day",
        "the curtains look nothing like the product photos and I want my money back",
        "the cordless drill stopped working after a month and is still under warranty",
        "I ordered two identical desk lamps by mistake and want to send one back",
    ],
}
# 9 openers and 9 closings per team: 3 each for train, validation and test (at random).
OPENERS = {
    "billing": ["Hi,", "Good morning,", "Hello,", "Dear support team,", "Quick question:", "Hi there,",
                "Hello again,", "Sorry to bother you,", "Urgent:"],
    "shipping": ["Hey,", "Good afternoon,", "Still waiting:", "Where is my order?", "Hi folks,", "Hello there,",
                 "Not happy:", "Help please,", "Morning,"],
    "technical": ["Bug report:", "Hi support,", "Something is broken:", "Hello IT,", "Heads up,", "Hi all,",
                  "Not sure who to ask,", "Problem here:", "Good evening,"],
    "account": ["Hi, quick request:", "Hello, I need help,", "Dear team,", "Greetings,", "Hi, security question:",
                "Hello folks,", "Request:", "Hi everyone,", "Please help:"],
    "returns": ["Hi guys,", "Hello customer care,", "Dear customer service,", "Hiya,", "About my recent purchase:",
                "Hello, me again,", "Good day,", "Question:", "Hi team,"],
}
CLOSINGS = {
    "billing": ["Please refund the difference.", "Account number 55120.", "Thanks in advance for checking.",
                "Invoice reference INV-3391.", "Could someone call me back about it?", "Please sort this out today.",
                "I have attached the bank statement.", "Kind regards, Maria.", "This needs fixing before month end."],
    "shipping": ["Order 48213.", "Please let me know where it is.", "I need it by the weekend.",
                 "Thanks for any update.", "The tracking link is in my order history.", "Best, Tom.",
                 "Can you chase the courier?", "It was meant to be a birthday present.",
                 "Please get back to me quickly."],
    "technical": ["I already tried reinstalling.", "Screenshots attached.", "Using version 4.2 on Android.",
                  "Cleared the cache twice, no luck.", "This blocks my whole team.", "Thanks, Priya.",
                  "Happy to send logs if needed.", "Running the latest Windows build.", "Restarting did not help."],
    "account": ["My username is jdale84.", "Please confirm once done.", "I still have my old phone.",
                "Thanks for the quick help.", "This is quite urgent for me.", "Regards, Ahmed.",
                "My registered email is on file.", "I can verify my identity by phone.",
                "Let me know what you need from me."],
    "returns": ["Order 77120.", "The item is unused and still boxed.", "Please send instructions.",
                "I still have the original packaging.", "Cheers, Lena.", "Bought it three weeks ago.",
                "What are my options?", "Receipt attached.", "Hoping for a quick exchange."],
}
SIZES = {"train": 48, "validation": 12, "test": 12}  # messages per team
NOISE = {"train": 0.12, "validation": 0.12, "test": 0.0}  # share of labels routed to another team


def compose(opener: str, issue: str, closing: str) -> str:
    return f"{opener} {issue}. {closing}"


def content_words(text: str) -> list[str]:
    """The words the analysis can use as players: not stopwords."""
    return [w for w in WORD_PATTERN.findall(text) if w.lower() not in STOPWORDS]


def check_material() -> None:
    for table in (ISSUES, OPENERS, CLOSINGS):
        texts = [text for texts in table.values() for text in texts]
        assert len(texts) == len(set(texts)), "a string appears twice (or under two teams)"
    for label in ISSUES:
        assert len(ISSUES[label]) == 16 and len(OPENERS[label]) == 9 and len(CLOSINGS[label]) == 9, label


def checked(text: str) -> str:
    n_words, n_content = len(WORD_PATTERN.findall(text)), len(content_words(text))
    assert n_words <= 35 and n_content >= 8, f"{n_words} words, {n_content} content words: {text}"
    return text


APPENDED_PER_TEAM = 16


def appended_train_rows(unused: dict[str, list], labels: list[str]) -> list[dict]:
    """16 more training messages per team from unused training combinations, 12% noisy (own seed)."""
    rng = random.Random(2032)
    rows = []
    for label in sorted(unused):
        combos = list(unused[label])
        rng.shuffle(combos)
        rows += [{"prompt": PROMPT.format(text=checked(compose(*combo))), "completion": label}
                 for combo in combos[:APPENDED_PER_TEAM]]
    for index in rng.sample(range(len(rows)), round(NOISE["train"] * len(rows))):
        rows[index]["completion"] = rng.choice([label for label in labels if label != rows[index]["completion"]])
    rng.shuffle(rows)
    return rows


def main() -> None:
    """Each split gets its own issues, openers and closings: test needs generalisation, not recall."""
    check_material()
    rng = random.Random(2031)
    splits = {split: [] for split in SIZES}
    unused = {}  # team -> training combinations not drawn: material for the appended rows
    for label, issues in ISSUES.items():
        iss, op, cl = list(issues), list(OPENERS[label]), list(CLOSINGS[label])
        for items in (iss, op, cl):
            rng.shuffle(items)
        parts = {"train": (iss[:10], op[:3], cl[:3]), "validation": (iss[10:13], op[3:6], cl[3:6]),
                 "test": (iss[13:], op[6:], cl[6:])}
        for split, (issues_, openers, closings) in parts.items():
            combos = [(o, i, c) for o in openers for i in issues_ for c in closings]
            rng.shuffle(combos)
            for combo in combos[: SIZES[split]]:
                splits[split].append({"prompt": PROMPT.format(text=checked(compose(*combo))), "completion": label})
            if split == "train":
                unused[label] = combos[SIZES[split]:]
    prompts = [row["prompt"] for rows in splits.values() for row in rows]
    assert len(prompts) == len(set(prompts)), "a message appears twice"
    # Like real routing logs, the training (and validation) labels are noisy: agents
    # disagree, above all on tickets that touch two teams. Test labels are clean.
    labels = sorted(ISSUES)
    noisy = {}
    for split, rows in splits.items():
        flipped = rng.sample(range(len(rows)), round(NOISE[split] * len(rows)))
        for index in flipped:
            rows[index]["completion"] = rng.choice([label for label in labels if label != rows[index]["completion"]])
        noisy[split] = len(flipped)
    out = Path(__file__).resolve().parents[1] / "src" / "sftscope" / "datasets"
    out.mkdir(parents=True, exist_ok=True)
    for split, rows in splits.items():
        rng.shuffle(rows)
    splits["train"] += appended_train_rows(unused, labels)
    prompts = [row["prompt"] for rows in splits.values() for row in rows]
    assert len(prompts) == len(set(prompts)), "a message appears twice"
    for split, rows in splits.items():
        with open(out / f"tickets_{split}.jsonl", "w", encoding="utf-8") as handle:
            for row in rows:
                handle.write(json.dumps(row) + "\n")
    print(", ".join(f"{len(rows)} {split} ({noisy[split]} with noisy labels)" for split, rows in splits.items())
          + f" messages written, teams {labels}")


if __name__ == "__main__":
    main()
