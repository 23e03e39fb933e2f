"""Coverage and whole-prompt R²: how much of the prompt a result's players explain."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from sftscope.decompose import and_or_interactions
from sftscope.errors import SftscopeError
from sftscope.players import tokenize_prompt
from sftscope.wholeprompt import content_units, r_squared, random_masks, unit_values, whole_prompt

TEXT = "we won the game today , so happy and my friends are tired"


class PlantedModel(torch.nn.Module):
    """Log-odds of the target made of AND terms over which planted tokens are present, nothing else.

    A token counts as present when some position still carries its embedding
    (masked positions carry the zero baseline), so the output depends on the
    prompt only through the planted tokens.
    """

    def __init__(self, vocab_size: int, terms: list[tuple[tuple[int, ...], float]], target_id: int):
        super().__init__()
        torch.manual_seed(0)
        self.embed = torch.nn.Embedding(vocab_size, 8)
        self.terms, self.target_id, self.vocab_size = terms, target_id, vocab_size
        self.config = SimpleNamespace(sliding_window=None)

    def get_input_embeddings(self):
        return self.embed

    def forward(self, inputs_embeds, **_):
        table = self.embed.weight
        close = (inputs_embeds[:, :, None, :] - table[None, None]).norm(dim=-1) < 1e-5  # [B, L, V]
        present = close.any(dim=1)  # [B, V]
        score = torch.zeros(len(inputs_embeds))
        for tokens, weight in self.terms:
            score = score + weight * present[:, list(tokens)].all(dim=1).float()
        logits = torch.zeros(len(inputs_embeds), 1, self.vocab_size)
        logits[:, -1, self.target_id] = score
        return SimpleNamespace(logits=logits)


def word_players(prompt, texts):
    """Word players given by their text (each must be one word of the prompt)."""
    chosen = [next(w for w in prompt.words if w.text == t) for t in texts]
    return [w.token_span for w in chosen]


def game_of(model, prompt, spans, target_id, baseline, max_batch_tokens=16_384):
    """The 2^n values of the players' game, the background in place, through unit_values (tested below)."""
    units = content_units(prompt.words, spans)
    n = len(spans)
    masks = np.arange(1 << n)
    present = np.ones((len(masks), len(units)), dtype=bool)
    present[:, :n] = (masks[:, None] >> np.arange(n)) & 1
    return unit_values(model, baseline, prompt.input_ids, units, present, target_id, max_batch_tokens=max_batch_tokens)


@pytest.fixture
def planted(word_tokenizer):
    vocab = word_tokenizer.get_vocab()
    ids = lambda *words: tuple(vocab[w] for w in words)  # noqa: E731
    terms = [(ids("won", "game"), 2.0), (ids("happy"), 1.5), (ids("game", "happy"), -0.7)]
    return PlantedModel(len(vocab), terms, vocab["joy"]), vocab["joy"]


def check(model, prompt, spans, target, baseline, masks=256, noise_bound=0.0):
    values = game_of(model, prompt, spans, target, baseline)
    fit = and_or_interactions(values[None], noise_bound=noise_bound)[0]
    return whole_prompt(model, baseline, prompt.input_ids, prompt.words, spans, target, fit.values, fit.fitted(),
                        masks=masks, seed=3)


def test_phrase_players_on_a_planted_model_cover_the_prompt_and_fit_it(word_tokenizer, planted):
    from sftscope.phrases import choose_phrases

    model, target = planted
    prompt = tokenize_prompt(word_tokenizer, TEXT, use_chat_template=False)
    baseline = torch.zeros(8)
    phrases = choose_phrases(prompt, 3)
    result = check(model, prompt, list(phrases.token_spans), target, baseline)
    assert result.units == 3 and result.masks == 256
    assert result.coverage == pytest.approx(1.0, abs=1e-9)
    assert result.r2 == pytest.approx(1.0, abs=1e-9)  # no noise allowed: the fit is the game
    # the default noise bound (|q| <= 0.02 |v(N) - v(0)|) costs at most a little of R²
    bounded = check(model, prompt, list(phrases.token_spans), target, baseline, noise_bound=0.02)
    assert 0.98 < bounded.r2 <= 1.0


def test_word_players_on_the_planted_words_fit_and_words_outside_them_cover_nothing(word_tokenizer, planted):
    model, target = planted
    prompt = tokenize_prompt(word_tokenizer, TEXT, use_chat_template=False)
    baseline = torch.zeros(8)
    inside = check(model, prompt, word_players(prompt, ["won", "game", "happy"]), target, baseline)
    assert inside.coverage == pytest.approx(1.0, abs=1e-9) and inside.r2 == pytest.approx(1.0, abs=1e-9)
    assert inside.units == len(prompt.words)  # three players + each other word
    outside = check(model, prompt, word_players(prompt, ["friends", "tired", "we"]), target, baseline)
    assert abs(outside.coverage) < 1e-6 and outside.content_effect == pytest.approx(2.8)
    assert outside.r2 < 0.05  # the fit is a constant: it explains none of the masks' variance
    partial = check(model, prompt, word_players(prompt, ["won", "game", "tired"]), target, baseline)
    assert 0.2 < partial.coverage < 0.9 and 0 < partial.r2 < 0.9


@pytest.mark.parametrize("fixture", ["tiny_llama", "tiny_gemma"])
def test_unit_masks_equal_the_naive_engine_on_the_players_masks(request, fixture, word_tokenizer):
    """With the background present, masked units are exactly the game's masked prompts (template prefix cached)."""
    from sftscope import MaskedGame, NaiveEngine, baseline_vector

    model = request.getfixturevalue(fixture)
    prompt = tokenize_prompt(word_tokenizer, TEXT)
    assert prompt.words[0].token_span[0] > 0  # the template comes first: the cached-prefix path
    spans = word_players(prompt, ["won", "happy", "friends", "tired"])
    baseline = baseline_vector(model, word_tokenizer)
    target = word_tokenizer.get_vocab()["joy"]
    naive = NaiveEngine(model, baseline).values(MaskedGame(tuple(prompt.input_ids), tuple(spans), target))
    np.testing.assert_allclose(game_of(model, prompt, spans, target, baseline), naive, atol=1e-4)
    # batches of any size give the same values
    small = game_of(model, prompt, spans, target, baseline, max_batch_tokens=40)
    np.testing.assert_allclose(small, naive, atol=1e-4)


def test_units_are_the_players_then_each_outside_word_and_shared_tokens_join():
    word = lambda span: SimpleNamespace(token_span=span)  # noqa: E731
    words = [word((1, 2)), word((2, 4)), word((3, 5)), word((5, 6)), word((6, 7))]
    # words 1 and 2 share token 3: one unit; the player (5, 6) is not repeated
    assert content_units(words, [(5, 6)]) == [(5,), (1,), (2, 3, 4), (6,)]
    assert content_units(words, [(1, 2), (2, 4), (3, 5), (5, 6), (6, 7)][:1] + [(6, 7)]) == [
        (1,), (6,), (2, 3, 4), (5,)]
    every = {k for unit in content_units(words, [(5, 6)]) for k in unit}
    assert every == set(range(1, 7))


def test_random_masks_are_seeded_and_half_present():
    a, b = random_masks(20, 400, seed=5), random_masks(20, 400, seed=5)
    assert (a == b).all() and not (a == random_masks(20, 400, seed=6)).all()
    assert 0.45 < a.mean() < 0.55


def test_r_squared_is_nan_on_constant_outputs_and_exact_on_a_perfect_fit():
    assert np.isnan(r_squared(np.ones(10), np.zeros(10)))
    x = np.arange(10.0)
    assert r_squared(x, x) == 1.0 and r_squared(x, np.full(10, x.mean())) == pytest.approx(0.0)


def test_no_masks_skips_r2_and_negative_masks_are_refused(word_tokenizer, planted):
    model, target = planted
    prompt = tokenize_prompt(word_tokenizer, TEXT, use_chat_template=False)
    baseline = torch.zeros(8)
    result = check(model, prompt, word_players(prompt, ["won", "game"]), target, baseline, masks=0)
    assert np.isnan(result.r2) and result.masks == 0 and result.coverage == pytest.approx(1.3 / 2.8)  # won∧game, less game∧happy
    with pytest.raises(SftscopeError, match="masks must be >= 0, got -1"):
        check(model, prompt, word_players(prompt, ["won"]), target, baseline, masks=-1)


def test_every_extracted_result_carries_its_checks(tiny_llama, word_tokenizer, tmp_path):
    from sftscope import extract_interactions
    from sftscope.interactions import read_metadata

    words = extract_interactions(tiny_llama, word_tokenizer, TEXT, "joy", n_players=3, whole_prompt_masks=32)
    assert words.whole.masks == 32 and words.whole.units > 3 and np.isfinite(words.whole.r2)
    assert words.settings["whole_prompt_masks"] == 32
    phrases = extract_interactions(tiny_llama, word_tokenizer, TEXT, "joy", n_players=3, players_kind="phrases")
    assert phrases.whole.units == 3 and phrases.whole.coverage == pytest.approx(1.0)
    assert 0.98 < phrases.whole.r2 <= 1.0  # the fit on the phrases' own masks, within its noise bound
    stored = read_metadata(words.to_parquet(tmp_path / "r.parquet"))["whole_prompt"]
    assert stored == pytest.approx(words.whole.as_row())
    with pytest.raises(SftscopeError, match="whole_prompt_masks must be >= 0"):
        extract_interactions(tiny_llama, word_tokenizer, TEXT, "joy", n_players=3, whole_prompt_masks=-4)


def long_prompt(words: int) -> str:
    """``words`` words, a full stop after every thirteenth and a comma after every other seventh."""
    pieces = "my flight got cancelled again i was so tired the movie was great and we won the game today".split()
    out = []
    for k in range(words):
        out.append(pieces[k % len(pieces)])
        if k % 13 == 12:
            out.append(".")
        elif k % 7 == 6:
            out.append(",")
    return " ".join(out)


def test_a_prompt_of_150_words_runs_end_to_end_on_phrase_players(tiny_llama, word_tokenizer):
    from sftscope import extract_interactions

    text = long_prompt(150)
    assert len(tokenize_prompt(word_tokenizer, text).words) == 150
    result = extract_interactions(tiny_llama, word_tokenizer, text, "joy", n_players=10, players_kind="phrases")
    assert len(result.players) == 10 and len(result.values) == 1 << 10
    assert result.whole.coverage == pytest.approx(1.0) and result.whole.units == 10
    assert result.decomposition.matching_error < 1e-6


def test_a_prompt_longer_than_the_models_context_is_refused_with_its_count(tiny_llama, word_tokenizer):
    from sftscope import extract_interactions

    with pytest.raises(SftscopeError, match=r"the prompt is \d+ tokens with its template, longer than the model's "
                                            r"context of 256"):
        extract_interactions(tiny_llama, word_tokenizer, long_prompt(300), "joy", n_players=4, players_kind="phrases")


def test_config_refuses_negative_whole_prompt_masks():
    from sftscope.config import run_config_from_dict

    with pytest.raises(SftscopeError, match="whole_prompt_masks"):
        run_config_from_dict({"analysis": {"whole_prompt_masks": -1}})


def test_a_run_stores_coverage_per_unit_and_the_report_shows_it(tiny_run):
    from sftscope.analyze import analyze
    from sftscope.config import AnalysisSettings
    from sftscope.report import build_report
    from sftscope.store import load_effects

    settings = AnalysisSettings(samples_per_split=1, n_players=3, drift=False, whole_prompt_masks=8)
    summary = analyze(tiny_run, settings)
    effects = load_effects(tiny_run)
    per_unit = effects.drop_duplicates(["model", "step", "sample"])
    assert per_unit["whole_masks"].eq(8).all() and per_unit["coverage"].notna().all()
    rows = summary["whole_prompt"]
    assert {(r["step"], r["split"]) for r in rows} == {(s, p) for s, p in per_unit[["step", "split"]].itertuples(
        index=False)}
    assert all(r["whole_masks"] == 8 and r["results"] == 1 for r in rows)
    page = build_report(tiny_run).read_text(encoding="utf-8")
    assert 'id="whole-prompt"' in page and "8 random masks" in page
    # a stored unit is never reused under other settings: more masks recompute every unit
    again = analyze(tiny_run, AnalysisSettings(samples_per_split=1, n_players=3, drift=False, whole_prompt_masks=0))
    assert again["whole_prompt"] and all(r["whole_r2"] is None and r["whole_masks"] == 0 for r in again["whole_prompt"])
    assert "was not computed on this run" in build_report(tiny_run).read_text(encoding="utf-8")


def test_word_players_are_chosen_by_ablation_on_a_prompt_of_more_than_63_candidate_words(tiny_llama, word_tokenizer):
    """Ablation masks over 70 candidates do not fit int64; they once raised a numpy TypeError."""
    from sftscope import select_players

    text = long_prompt(150)
    assert len(tokenize_prompt(word_tokenizer, text).candidates) > 63
    players = select_players(tiny_llama, word_tokenizer, text, "joy", 6)
    assert len(players) == 6


@pytest.mark.parametrize("n", [3, 62, 63, 64, 65, 70])
def test_ablation_masks_drop_one_player_each_at_any_count(n):
    """At 64 players numpy would turn these masks into float64; they must stay exact integers."""
    from sftscope.extract import ablation_masks
    from sftscope.game import mask_to_embeddings

    masks = ablation_masks(n)
    assert masks.dtype.kind in "iO" and len(masks) == n + 1
    base = torch.ones(n, 1)
    embeds = mask_to_embeddings(base, [(i, i + 1) for i in range(n)], masks, torch.zeros(1))
    expected = torch.ones(n + 1, n)
    expected[torch.arange(1, n + 1), torch.arange(n)] = 0
    assert torch.equal(embeds[..., 0], expected)
