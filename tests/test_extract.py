import numpy as np
import pandas as pd
import pytest
import torch

from sftscope import SftscopeError, extract_interactions, read_metadata
from sftscope.cli import main
from sftscope.players import choose_players, target_token, tokenize_prompt

PROMPT = "Classify the emotion: my flight got cancelled again, this is outrageous!"


def test_words_map_to_their_tokens(word_tokenizer):
    prompt = tokenize_prompt(word_tokenizer, PROMPT)
    assert prompt.text.startswith("<user> ") and prompt.text.endswith("<assistant> ")
    for word in prompt.words:
        start, end = word.token_span
        assert word_tokenizer.decode(prompt.input_ids[start:end]).lower() == word.text.lower()
    candidates = [prompt.words[i].text for i in prompt.candidates]
    assert "the" not in candidates and "this" not in candidates
    assert candidates[:3] == ["Classify", "emotion", "flight"]


def test_plain_text_without_template(word_tokenizer):
    prompt = tokenize_prompt(word_tokenizer, "my flight", use_chat_template=False)
    assert prompt.text == "my flight\n" and [w.text for w in prompt.words] == ["my", "flight"]


def test_selection_strategies(word_tokenizer):
    prompt = tokenize_prompt(word_tokenizer, PROMPT)
    first = choose_players(prompt, 3, selection="first")
    assert first.words == ("Classify", "emotion", "flight")
    r1 = choose_players(prompt, 3, selection="random", seed=5)
    assert r1 == choose_players(prompt, 3, selection="random", seed=5)
    scores = lambda words: np.array([len(w.text) for w in words], dtype=float)  # noqa: E731
    longest = choose_players(prompt, 2, selection="ablation", ablation_scores=scores)
    assert set(longest.words) == {"outrageous", "cancelled"}
    assert longest.words == ("cancelled", "outrageous")  # reading order


def test_too_few_words(word_tokenizer):
    prompt = tokenize_prompt(word_tokenizer, "my flight got cancelled")
    with pytest.raises(SftscopeError, match="3 usable words, fewer than the 5"):
        choose_players(prompt, 5, selection="first")
    assert len(choose_players(prompt, 5, selection="first", allow_fewer=True)) == 3


def test_bad_prompts_and_responses(word_tokenizer):
    with pytest.raises(SftscopeError, match="empty prompt"):
        tokenize_prompt(word_tokenizer, "   ")
    with pytest.raises(SftscopeError, match="no usable word"):
        choose_players(tokenize_prompt(word_tokenizer, "the a is !"), 2, selection="first")
    with pytest.raises(SftscopeError, match="tokenizes to nothing"):
        target_token(word_tokenizer, "")


def test_whole_path_on_tiny_llama(tiny_llama, word_tokenizer, tmp_path):
    result = extract_interactions(tiny_llama, word_tokenizer, PROMPT, "anger", n_players=5, seed=3)
    assert len(result.players) == 5
    assert result.decomposition.matching_error < 1e-9
    assert result.settings["engine"] == "PrefixEngine"
    frame = result.to_dataframe()
    assert len(frame) == 2 * 32 and set(frame["kind"]) == {"AND", "OR"}
    assert frame.loc[frame.bitmask == 0b11, "order"].eq(2).all()
    path = result.to_parquet(tmp_path / "x.parquet")
    back = pd.read_parquet(path)
    pd.testing.assert_frame_equal(back, frame)
    meta = read_metadata(path)
    assert meta["players"]["words"] == list(result.players.words) and meta["target_token"] == "anger"
    again = extract_interactions(tiny_llama, word_tokenizer, PROMPT, "anger", n_players=5, seed=3)
    assert np.array_equal(again.values, result.values)
    assert np.array_equal(again.decomposition.and_effects, result.decomposition.and_effects)
    naive = extract_interactions(tiny_llama, word_tokenizer, PROMPT, "anger", players=result.players, engine="naive")
    np.testing.assert_allclose(naive.values, result.values, atol=1e-4)


def test_universal_matching_on_a_real_forward_pass(tiny_llama, word_tokenizer):
    result = extract_interactions(tiny_llama, word_tokenizer, PROMPT, "joy", n_players=6, selection="first")
    d = result.decomposition
    masks = np.arange(64)
    model_out = d.values
    logic = np.array([
        d.and_effects[[t for t in masks if t & s == t]].sum() + d.or_effects[0]
        + d.or_effects[[t for t in masks if t and t & s]].sum()
        for s in masks
    ])
    assert np.max(np.abs(model_out + d.q - logic)) < 1e-9


def test_cli_unknown_model_is_one_line(capsys):
    code = main(["extract", "--model", "no-such-model", "--prompt", "hi there", "--response", "x"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.count("\n") == 0 and "unknown model 'no-such-model'" in err
    code = main(["extract", "--model", "/no/such/dir", "--prompt", "hi there", "--response", "x"])
    assert code == 2 and "model folder not found: /no/such/dir" in capsys.readouterr().err


def test_many_prompts_batched_equal_one_at_a_time(tiny_llama, word_tokenizer):
    from sftscope.extract import Request, extract_many

    prompts = [
        ("my flight got cancelled again and nobody helped", "anger"),
        ("we won the final game tonight", "joy"),
        ("the doctor called about my test results late today", "fear"),
    ]
    requests = [Request(p, r, context=f"sample {i}") for i, (p, r) in enumerate(prompts)]
    options = dict(n_players=4, selection="first", engine="prefix")
    together = extract_many(tiny_llama, word_tokenizer, requests, batch_samples=3, **options)
    for request, batched in zip(requests, together):
        alone = extract_interactions(tiny_llama, word_tokenizer, request.prompt, request.response, **options)
        assert alone.players == batched.players
        np.testing.assert_allclose(batched.decomposition.values, alone.decomposition.values, atol=1e-5)
    with pytest.raises(SftscopeError, match="batch_samples must be >= 1"):
        extract_many(tiny_llama, word_tokenizer, requests, batch_samples=0, **options)


def test_nan_in_a_batch_names_its_sample(tiny_llama, word_tokenizer):
    import copy

    from sftscope.extract import Request, extract_many

    model = copy.deepcopy(tiny_llama)
    prompts = ["we won the final game tonight", "my flight got cancelled again and nobody helped"]
    players = [
        extract_interactions(model, word_tokenizer, p, "joy", n_players=3, selection="first").players for p in prompts
    ]
    # poison the embedding of one word of the second prompt only (a mean baseline would spread it)
    bad_id = word_tokenizer.convert_tokens_to_ids("flight")
    with torch.no_grad():
        model.get_input_embeddings().weight[bad_id] = float("nan")
    requests = [Request(p, "joy", pl, context=f"sample {i}") for i, (p, pl) in enumerate(zip(prompts, players))]
    with pytest.raises(SftscopeError, match="NaN/inf at mask .*\\(sample 1\\)"):
        extract_many(model, word_tokenizer, requests, engine="prefix", baseline="zeros")
