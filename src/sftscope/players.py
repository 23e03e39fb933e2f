"""Players: the words of the user's prompt, each mapped to its token span.

The prompt is rendered with the tokenizer's chat template (plain text when the
tokenizer has none). Only words of the user content can be players; the
template and all other words are background and never masked.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Callable, Literal, Sequence

import numpy as np

from .errors import SftscopeError

Selection = Literal["ablation", "first", "random"]
PlayerKind = Literal["words", "phrases"]

# Without a chat template the prompt is followed by this, and the response by nothing:
# the same text in training (data.to_plain) and in extraction.
PLAIN_SEPARATOR = "\n"

WORD_PATTERN = re.compile(r"\w+(?:['’]\w+)*")

# A short English stop-word list: these words rarely carry a prompt's meaning and
# would waste players. Kept here (not NLTK) so the tool works offline.
STOPWORDS = frozenset(
    """a about above after again against all am an and any are as at be because been before being
    below between both but by can could did do does doing down during each few for from further had
    has have having he her here hers herself him himself his how i if in into is it its itself just
    me more most my myself no nor not now of off on once only or other our ours ourselves out over
    own same she should so some such than that the their theirs them themselves then there these they
    this those through to too under until up very was we were what when where which while who whom
    why will with would you your yours yourself yourselves s t""".split()
)


def usable_words(text: str, kind: str = "words") -> int:
    """Words of ``text`` that can be players, or make phrases: not stopwords (for word players), not punctuation
    (before tokenization)."""
    return sum(1 for m in WORD_PATTERN.finditer(text) if kind == "phrases" or m.group().lower() not in STOPWORDS)


@dataclass(frozen=True)
class Word:
    """A word of the user content: text, character span in the rendered prompt, token span."""

    text: str
    char_span: tuple[int, int]
    token_span: tuple[int, int]  # [start, end) token positions in ``input_ids``


@dataclass
class Prompt:
    """A rendered prompt: its text, token ids, and the candidate words of its user content."""

    text: str
    input_ids: list[int]
    content_span: tuple[int, int]
    words: list[Word]
    candidates: list[int] = field(default_factory=list)  # indices into ``words``


@dataclass(frozen=True)
class Players:
    """The ``n`` chosen words, ordered by position; player ``i`` is bit ``i`` of a mask."""

    words: tuple[str, ...]
    char_spans: tuple[tuple[int, int], ...]  # relative to the user content: tokenizer-independent
    token_spans: tuple[tuple[int, int], ...]  # in the selecting tokenizer's rendering

    def __len__(self) -> int:
        return len(self.words)

    def names(self, mask: int) -> list[str]:
        return [w for i, w in enumerate(self.words) if mask >> i & 1]


def render_prompt(
    tokenizer, prompt: str, *, use_chat_template: bool | None = None
) -> tuple[str, tuple[int, int], bool]:
    """Render the user prompt: its text, the span of the user content, whether templated."""
    if not prompt or not prompt.strip():
        raise SftscopeError("empty prompt: nothing to explain")
    has_template = bool(getattr(tokenizer, "chat_template", None))
    if use_chat_template is None:
        use_chat_template = has_template
    if use_chat_template and not has_template:
        raise SftscopeError("the tokenizer has no chat template; pass use_chat_template=False")
    if not use_chat_template:
        return prompt + PLAIN_SEPARATOR, (0, len(prompt)), False
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
    )
    start = text.rfind(prompt)
    if start < 0:
        raise SftscopeError("the chat template changed the user content; cannot locate its words")
    return text, (start, start + len(prompt)), True


def tokenize_prompt(tokenizer, prompt: str, *, use_chat_template: bool | None = None) -> Prompt:
    """Render, tokenize with offsets, and map every word of the user content to tokens."""
    if not getattr(tokenizer, "is_fast", False):
        raise SftscopeError("word offsets need a fast tokenizer (tokenizer.is_fast is False)")
    text, (c0, c1), templated = render_prompt(tokenizer, prompt, use_chat_template=use_chat_template)
    # A rendered template carries its own special tokens; plain text gets the usual ones (BOS).
    enc = tokenizer(text, add_special_tokens=not templated, return_offsets_mapping=True)
    ids, offsets = list(enc["input_ids"]), [tuple(o) for o in enc["offset_mapping"]]
    words = []
    for match in WORD_PATTERN.finditer(text, c0, c1):
        w0, w1 = match.span()
        toks = [k for k, (t0, t1) in enumerate(offsets) if t0 < w1 and t1 > w0 and t1 > t0]
        if toks:
            words.append(Word(match.group(), (w0, w1), (toks[0], toks[-1] + 1)))
    # A token shared by two words cannot be masked for one alone: drop both words.
    shared = set()
    for a, b in zip(words, words[1:]):
        if a.token_span[1] > b.token_span[0]:
            shared.update((a.char_span, b.char_span))
    candidates = [
        i
        for i, w in enumerate(words)
        if w.char_span not in shared and w.text.lower() not in STOPWORDS
    ]
    return Prompt(text, ids, (c0, c1), words, candidates)


def choose_players(
    prompt: Prompt,
    n_players: int,
    *,
    selection: Selection = "ablation",
    seed: int = 0,
    allow_fewer: bool = False,
    ablation_scores: Callable[[Sequence[Word]], np.ndarray] | None = None,
) -> Players:
    """Pick ``n_players`` candidate words.

    - ``ablation`` (default): the words with the largest single-word effect
      ``|v(N) - v(N without i)|``, given by ``ablation_scores``; ties by position.
    - ``first``: the first candidates in reading order.
    - ``random``: a uniform sample with ``seed``.

    Fewer candidates than ``n_players`` is an error unless ``allow_fewer``, which
    then uses all candidates (a smaller ``n``).
    """
    if n_players < 1:
        raise SftscopeError(f"n_players must be >= 1, got {n_players}")
    pool = [prompt.words[i] for i in prompt.candidates]
    if not pool:
        raise SftscopeError("prompt has no usable word (only stopwords/punctuation)")
    if len(pool) < n_players:
        if not allow_fewer:
            raise SftscopeError(
                f"prompt has {len(pool)} usable words, fewer than the {n_players} players asked "
                "(ask for fewer, or allow fewer: --allow-fewer)"
            )
        n_players = len(pool)
    if selection == "first":
        chosen = pool[:n_players]
    elif selection == "random":
        rng = np.random.default_rng(seed)
        chosen = [pool[i] for i in sorted(rng.choice(len(pool), size=n_players, replace=False))]
    elif selection == "ablation":
        if ablation_scores is None:
            raise SftscopeError("selection='ablation' needs a model to score words")
        scores = np.asarray(ablation_scores(pool), dtype=np.float64)
        order = sorted(range(len(pool)), key=lambda i: (-scores[i], i))
        chosen = [pool[i] for i in sorted(order[:n_players])]
    else:
        raise SftscopeError(f"unknown player selection {selection!r}: use ablation, first or random")
    chosen.sort(key=lambda w: w.char_span)
    offset = prompt.content_span[0]
    return Players(
        tuple(w.text for w in chosen),
        tuple((w.char_span[0] - offset, w.char_span[1] - offset) for w in chosen),
        tuple(w.token_span for w in chosen),
    )


def target_token(tokenizer, response: str) -> int:
    """The first token of the reference response, tokenized on its own."""
    ids = tokenizer(response or "", add_special_tokens=False)["input_ids"] if response else []
    if not ids:
        raise SftscopeError("response tokenizes to nothing: the target token needs a non-empty response")
    return int(ids[0])
