"""Phrase players: contiguous spans that cover every word, cut at clauses, merged or split to exactly n."""

import pytest

from sftscope.errors import SftscopeError
from sftscope.phrases import choose_phrases, fit_phrases
from sftscope.players import tokenize_prompt

TEXT = "we won the game today , so happy and my friends are tired"


def phrases(tokenizer, text, n, **kwargs):
    return choose_phrases(tokenize_prompt(tokenizer, text), n, **kwargs)


@pytest.mark.parametrize("n", range(1, 13))
def test_every_word_of_the_content_is_in_exactly_one_phrase(word_tokenizer, n):
    prompt = tokenize_prompt(word_tokenizer, TEXT)
    players = choose_phrases(prompt, n)
    assert len(players) == n
    offset = prompt.content_span[0]
    owners = []
    for word in prompt.words:
        w0, w1 = word.char_span[0] - offset, word.char_span[1] - offset
        owners.append([i for i, (c0, c1) in enumerate(players.char_spans) if c0 <= w0 and w1 <= c1])
    assert all(len(o) == 1 for o in owners)
    assert [o[0] for o in owners] == sorted(o[0] for o in owners)  # contiguous and in reading order
    for text, (c0, c1), (t0, t1) in zip(players.words, players.char_spans, players.token_spans):
        assert TEXT[c0:c1] == text and t0 < t1
    assert all(a[1] <= b[0] for a, b in zip(players.token_spans, players.token_spans[1:]))


def test_clauses_are_cut_at_punctuation_and_openers_then_merged_or_split_by_the_rule(word_tokenizer):
    assert phrases(word_tokenizer, TEXT, 3).words == ("we won the game today", "so happy", "and my friends are tired")
    # two: the adjacent pair with the fewest words merges (7 and 7 words: the leftmost pair)
    assert phrases(word_tokenizer, TEXT, 2).words == ("we won the game today , so happy", "and my friends are tired")
    # four: the longest phrase (5 words; the leftmost of two) is split at its middle, the extra word on the left
    assert phrases(word_tokenizer, TEXT, 4).words == ("we won the", "game today", "so happy",
                                                      "and my friends are tired")


def test_fitting_is_deterministic_and_exact():
    assert fit_phrases(6, [2, 4], set(range(1, 6)), 3) == [(0, 2), (2, 4), (4, 6)]
    assert fit_phrases(6, [], set(range(1, 6)), 1) == [(0, 6)]
    assert fit_phrases(6, [], set(range(1, 6)), 6) == [(k, k + 1) for k in range(6)]
    # a boundary inside a shared token is never cut
    assert fit_phrases(4, [1, 2, 3], {1, 3}, 3) == [(0, 1), (1, 3), (3, 4)]


def test_fewer_words_than_phrases_asked_is_an_error_unless_allowed(word_tokenizer):
    with pytest.raises(SftscopeError, match="4 words .* fewer than the 5 players asked"):
        phrases(word_tokenizer, "we won the game", 5)
    assert len(phrases(word_tokenizer, "we won the game", 5, allow_fewer=True)) == 4
