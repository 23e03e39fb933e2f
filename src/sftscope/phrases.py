"""Phrase players: contiguous spans of the user content that together cover every word of it.

Words are the prompt's words (``players.WORD_PATTERN``), stopwords included.
The content is first cut into clauses: between two words whose text in
between holds punctuation that ends or separates a clause, or a line break,
and before a word that opens a clause (a coordinating or subordinating
conjunction, a relative pronoun). Then, deterministically, until there are
exactly ``n`` phrases:

- too many: the two adjacent phrases with the fewest words together are
  merged (ties: the leftmost pair);
- too few: the phrase with the most words is split at its middle word
  boundary (ties: the leftmost phrase; an odd count puts the extra word on
  the left).

A cut never separates two words that share a token (they could not be masked
apart); such a pair always stays in one phrase.
"""

from __future__ import annotations

import re
from typing import Sequence

from .errors import SftscopeError
from .players import Players, Prompt, Word

# punctuation between two words that ends or separates a clause (hyphens and apostrophes do not)
CLAUSE_PUNCTUATION = re.compile(r"[.,;:!?()\[\]{}\"“”«»…—–]|\s-\s|\n")
CLAUSE_OPENERS = frozenset(
    """and but or nor yet so because although though while whereas unless since if when whenever where
    wherever which who whom whose that after before until once than""".split()
)


def clause_cuts(words: Sequence[Word], text: str) -> list[int]:
    """Indices ``k`` (1 .. len-1) where a phrase may begin at word ``k``: a clause boundary before it."""
    cuts = []
    for k in range(1, len(words)):
        between = text[words[k - 1].char_span[1] : words[k].char_span[0]]
        if CLAUSE_PUNCTUATION.search(between) or words[k].text.lower() in CLAUSE_OPENERS:
            cuts.append(k)
    return cuts


def allowed_cuts(words: Sequence[Word]) -> set[int]:
    """Word boundaries a phrase may begin at: not between two words that share a token."""
    return {k for k in range(1, len(words)) if words[k - 1].token_span[1] <= words[k].token_span[0]}


def fit_phrases(count: int, cuts: Sequence[int], allowed: set[int], n: int) -> list[tuple[int, int]]:
    """``n`` phrases as ``[start, end)`` word ranges over ``count`` words, from the clause ``cuts`` (see module)."""
    bounds = [0] + sorted(k for k in set(cuts) if k in allowed) + [count]
    phrases = list(zip(bounds, bounds[1:]))
    while len(phrases) > n:
        sizes = [phrases[i + 1][1] - phrases[i][0] for i in range(len(phrases) - 1)]
        i = sizes.index(min(sizes))
        phrases[i : i + 2] = [(phrases[i][0], phrases[i + 1][1])]
    while len(phrases) < n:
        splittable = [i for i, (start, end) in enumerate(phrases) if any(k in allowed for k in range(start + 1, end))]
        if not splittable:
            raise SftscopeError(f"the prompt's {count} words cannot be cut into {n} phrases (words share tokens)")
        i = max(splittable, key=lambda i: (phrases[i][1] - phrases[i][0], -i))  # the longest, the leftmost of ties
        start, end = phrases[i]
        middle = start + (end - start + 1) // 2
        # the allowed boundary nearest the middle (ties: the earlier one)
        cut = min((k for k in range(start + 1, end) if k in allowed), key=lambda k: (abs(k - middle), k))
        phrases[i : i + 1] = [(start, cut), (cut, end)]
    return phrases


def choose_phrases(prompt: Prompt, n_players: int, *, allow_fewer: bool = False) -> Players:
    """``n_players`` phrases covering every word of the user content, each shown as its span of text."""
    if n_players < 1:
        raise SftscopeError(f"n_players must be >= 1, got {n_players}")
    words = prompt.words
    if not words:
        raise SftscopeError("prompt has no word to make phrases of")
    allowed = allowed_cuts(words)
    most = len(allowed) + 1
    if most < n_players:
        if not allow_fewer:
            raise SftscopeError(f"prompt has {len(words)} words ({most} possible phrases), fewer than the "
                                f"{n_players} players asked (ask for fewer, or allow fewer: --allow-fewer)")
        n_players = most
    ranges = fit_phrases(len(words), clause_cuts(words, prompt.text), allowed, n_players)
    offset = prompt.content_span[0]
    texts, chars, tokens = [], [], []
    for start, end in ranges:
        c0, c1 = words[start].char_span[0], words[end - 1].char_span[1]
        texts.append(prompt.text[c0:c1])
        chars.append((c0 - offset, c1 - offset))
        tokens.append((words[start].token_span[0], words[end - 1].token_span[1]))
    return Players(tuple(texts), tuple(chars), tuple(tokens))
