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


@pytest.mark.parametrize("arch", ["qwen2", "llama2-template", "llama3-template", "gemma3"])
def test_phrase_spans_survive_the_families_chat_templates(arch):
    """Each phrase's tokens are exactly its text, inside the user turn, whatever the template puts around it."""
    from helpers import bpe_tokenizer, word_tokenizer
    from test_architectures import ARCHS, TEXTS

    from sftscope.extract import _spans_in

    tokenizer = bpe_tokenizer(ARCHS[arch], TEXTS) if arch == "qwen2" else word_tokenizer(ARCHS[arch])
    prompt = tokenize_prompt(tokenizer, "we won the game today , so happy and my friends are tired")
    players = choose_phrases(prompt, 3)
    assert players.words == ("we won the game today", "so happy", "and my friends are tired")
    for text, (t0, t1) in zip(players.words, players.token_spans):
        assert tokenizer.decode(prompt.input_ids[t0:t1]).strip().lower().replace(" ,", ",") == text.lower()
    assert _spans_in(prompt, players) == players.token_spans  # frozen phrases map back to the same tokens


def test_extraction_on_phrases_equals_the_naive_engine_and_records_the_kind(tiny_llama, word_tokenizer):
    from sftscope import MaskedGame, NaiveEngine, baseline_vector, extract_interactions
    from sftscope.players import target_token

    result = extract_interactions(tiny_llama, word_tokenizer, TEXT, "joy", n_players=3, players_kind="phrases")
    assert result.players.words == ("we won the game today", "so happy", "and my friends are tired")
    assert result.settings["players"] == "phrases" and result.settings["engine"] == "PrefixEngine"
    rendered = tokenize_prompt(word_tokenizer, TEXT)
    game = MaskedGame(tuple(rendered.input_ids), result.players.token_spans, target_token(word_tokenizer, "joy"))
    naive = NaiveEngine(tiny_llama, baseline_vector(tiny_llama, word_tokenizer)).values(game)
    assert result.decomposition.values == pytest.approx(naive, abs=1e-4)


def test_a_run_analysed_on_phrase_players(tiny_run):
    from sftscope.analyze import analyze
    from sftscope.config import AnalysisSettings
    from sftscope.probes import load_probes
    from sftscope.store import RunFolder, load_effects

    analyze(tiny_run, AnalysisSettings(samples_per_split=1, n_players=3, players="phrases", drift=False))
    probes = load_probes(RunFolder(tiny_run).probes)
    assert probes
    for probe in probes:  # three phrases that together are the whole prompt, words and the text between them
        spans = probe.players.char_spans
        assert len(spans) == 3 and spans[0][0] == 0 and spans[-1][1] == len(probe.prompt)
        assert [probe.prompt[a:b] for a, b in spans] == list(probe.players.words)
    assert set(load_effects(tiny_run)["sample"]) == {p.sample for p in probes}


def test_an_unknown_player_kind_is_refused_before_anything_loads():
    from sftscope.config import run_config_from_dict

    with pytest.raises(SftscopeError, match="players.*must be words or phrases"):
        run_config_from_dict({"analysis": {"players": "sentences"}})


def test_extract_prints_each_phrase_player_as_its_text(tmp_path, tiny_llama, word_tokenizer, capsys, restore_logging):
    from sftscope.cli import main

    tiny_llama.save_pretrained(tmp_path / "m")
    word_tokenizer.save_pretrained(tmp_path / "m")
    status = main(["extract", "--model", str(tmp_path / "m"), "--prompt", TEXT, "--response", "joy",
                   "--players", "3", "--players-kind", "phrases", "--quiet"])
    out, err = capsys.readouterr()
    assert status == 0, err
    assert "players (3): we won the game today | so happy | and my friends are tired" in out
    assert "3 phrases covering them, then 8 masked prompts" in err
    # a selection rule is for words: with phrases it would be ignored, so it is refused before any model loads
    status = main(["extract", "--model", str(tmp_path / "absent"), "--prompt", TEXT, "--response", "joy",
                   "--players", "3", "--players-kind", "phrases", "--selection", "random", "--quiet"])
    err = capsys.readouterr().err
    assert status != 0 and "--selection random chooses word players" in err and err.count("\n") == 1
