import numpy as np
import pytest
import torch

from sftscope import MaskedGame, NaiveEngine, PrefixEngine, SftscopeError, baseline_vector, extract_interactions
from sftscope.game import log_odds
from sftscope.prefix import floor_tokens

IDS = tuple(range(5, 29))  # 24 tokens

SPAN_LAYOUTS = {
    "start": ((0, 1), (3, 4), (9, 11)),
    "middle_adjacent": ((6, 7), (7, 9), (9, 10), (14, 15)),
    "end": ((10, 11), (20, 22), (23, 24)),
    "multi_token": ((2, 5), (8, 12), (15, 18), (19, 20), (21, 23)),
}


@pytest.mark.parametrize("layout", sorted(SPAN_LAYOUTS))
@pytest.mark.parametrize("arch", ["tiny_llama", "tiny_gemma"])
def test_prefix_engine_equals_naive(arch, layout, request):
    model = request.getfixturevalue(arch)
    game = MaskedGame(IDS, SPAN_LAYOUTS[layout], target_id=7)
    baseline = baseline_vector(model, None, "mean")
    naive = NaiveEngine(model, baseline).values(game)
    prefix_engine = PrefixEngine(model, baseline)
    shared = prefix_engine.values(game)
    np.testing.assert_allclose(shared, naive, atol=1e-4)
    assert prefix_engine.tokens_computed == floor_tokens(game) < len(IDS) << game.n_players


@pytest.mark.parametrize("arch", ["tiny_llama", "tiny_gemma"])
def test_batch_of_samples_of_different_lengths_equals_one_at_a_time(arch, request):
    model = request.getfixturevalue(arch)
    baseline = baseline_vector(model, None, "mean")
    # three players each; one sample starts with a player (no background), lengths 24, 17 and 30
    games = [
        MaskedGame(IDS, ((0, 1), (3, 4), (9, 11)), target_id=7),
        MaskedGame(tuple(range(40, 57)), ((4, 6), (6, 7), (12, 13)), target_id=11),
        MaskedGame(tuple(range(3, 33)), ((10, 11), (20, 22), (27, 30)), target_id=5),
    ]
    engine = PrefixEngine(model, baseline)
    together = engine.values_batch(games)
    naive = NaiveEngine(model, baseline)
    for game, values in zip(games, together):
        np.testing.assert_allclose(values, naive.values(game), atol=1e-4)
    # padding is computed but never read; the real positions are exactly the floor
    assert engine.tokens_computed == sum(floor_tokens(g) for g in games)
    tight = PrefixEngine(model, baseline, max_memory_bytes=1).values_batch(games)
    for a, b in zip(tight, together):
        np.testing.assert_allclose(a, b, atol=1e-5)


def test_batch_needs_one_number_of_players(tiny_llama):
    baseline = baseline_vector(tiny_llama, None, "zeros")
    games = [MaskedGame(IDS, ((1, 2), (5, 6)), target_id=3), MaskedGame(IDS, ((1, 2),), target_id=3)]
    with pytest.raises(SftscopeError, match="same number of players; got \\[1, 2\\]"):
        PrefixEngine(tiny_llama, baseline).values_batch(games)


def test_model_without_the_attention_interface_is_refused(tiny_llama):
    import copy

    model = copy.deepcopy(tiny_llama)
    model._supports_attention_backend = False
    with pytest.raises(SftscopeError, match="use engine='naive'"):
        PrefixEngine(model, baseline_vector(model, None, "zeros"))


def test_prefix_engine_memory_budget_splits_without_changing_values(tiny_llama):
    game = MaskedGame(IDS, SPAN_LAYOUTS["multi_token"], target_id=3)
    baseline = baseline_vector(tiny_llama, None, "zeros")
    free = PrefixEngine(tiny_llama, baseline).values(game)
    tight = PrefixEngine(tiny_llama, baseline, max_memory_bytes=1)
    np.testing.assert_allclose(tight.values(game), free, atol=1e-5)
    assert tight._max == 2


def test_prefix_engine_bfloat16(tiny_llama):
    import copy

    model = copy.deepcopy(tiny_llama).to(torch.bfloat16)
    game = MaskedGame(IDS, SPAN_LAYOUTS["start"], target_id=9)
    baseline = baseline_vector(model, None, "mean")
    np.testing.assert_allclose(
        PrefixEngine(model, baseline).values(game), NaiveEngine(model, baseline).values(game), atol=0.1
    )


def test_naive_engine_masks_the_right_tokens(tiny_llama):
    game = MaskedGame(IDS, ((2, 4), (10, 11)), target_id=4)
    baseline = baseline_vector(tiny_llama, None, "zeros")
    values = NaiveEngine(tiny_llama, baseline, max_batch_tokens=30).values(game)
    with torch.no_grad():
        embeds = tiny_llama.get_input_embeddings()(torch.tensor([IDS]))
        embeds[0, 2:4] = 0.0  # player 0 absent, player 1 present -> mask 0b10
        logits = tiny_llama(inputs_embeds=embeds).logits[0, -1]
    assert values[0b10] == pytest.approx(float(log_odds(logits, 4)), abs=1e-5)


def test_log_odds_is_stable_and_correct():
    logits = torch.tensor([[2.0, 0.5, -1.0, 300.0]])
    p = torch.softmax(logits.double(), -1)[0, 1]
    assert float(log_odds(logits, 1)) == pytest.approx(float(torch.log(p) - torch.log1p(-p)), rel=1e-4)
    assert np.isfinite(float(log_odds(logits, 3)))


def test_bad_spans_are_rejected():
    with pytest.raises(SftscopeError, match="sorted"):
        MaskedGame(IDS, ((3, 5), (4, 6)), 1)
    with pytest.raises(SftscopeError, match="sorted"):
        MaskedGame(IDS, ((20, 30),), 1)


class Broken(torch.nn.Module):
    """A model whose forward pass goes wrong in a chosen way."""

    def __init__(self, inner, forward):
        super().__init__()
        self.inner, self.config, self._forward = inner, inner.config, forward

    def get_input_embeddings(self):
        return self.inner.get_input_embeddings()

    def forward(self, **kw):
        return self._forward(self.inner, **kw)


def nan_outputs(inner, **kw):
    out = inner(**kw)
    out.logits = out.logits * float("nan")
    return out


def out_of_memory(inner, **kw):
    raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")


def test_nan_outputs_are_named(tiny_llama, word_tokenizer):
    with pytest.raises(SftscopeError, match="NaN/inf.*sample 7"):
        extract_interactions(
            Broken(tiny_llama, nan_outputs), word_tokenizer, "my flight got cancelled again", "anger",
            n_players=3, selection="first", engine="naive", context="sample 7, step 0",
        )


def test_out_of_memory_is_one_line_with_advice(tiny_llama, word_tokenizer):
    with pytest.raises(SftscopeError, match="out of memory on cpu evaluating 2\\^3 masks.*max_memory_bytes"):
        extract_interactions(
            Broken(tiny_llama, out_of_memory), word_tokenizer, "my flight got cancelled again", "anger",
            n_players=3, selection="first", engine="naive",
        )


def test_prefix_engine_with_attention_softcap_and_sliding_window():
    from transformers import Gemma2Config, Gemma2ForCausalLM

    torch.manual_seed(2)
    config = Gemma2Config(
        vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=8, max_position_embeddings=256, sliding_window=16,
        attn_logit_softcapping=1.0, final_logit_softcapping=5.0,
    )
    model = Gemma2ForCausalLM(config).eval()
    with torch.no_grad():  # scores well past the cap, so that ignoring it would show (0.14 here)
        for layer in model.model.layers:
            layer.self_attn.q_proj.weight.mul_(30)
            layer.self_attn.k_proj.weight.mul_(30)
    game = MaskedGame(IDS, SPAN_LAYOUTS["multi_token"], target_id=7)
    baseline = baseline_vector(model, None, "mean")
    np.testing.assert_allclose(
        PrefixEngine(model, baseline).values(game), NaiveEngine(model, baseline).values(game), atol=1e-4
    )
