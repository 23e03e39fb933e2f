"""Task quality: label scoring with a shared prompt cache equals the direct computation; metrics by hand."""

import copy

import numpy as np
import pytest
import torch

from sftscope import SftscopeError
from sftscope.data import Pair
from sftscope.quality import (cache_argument, encode, label_set, macro_f1, output_cache, prompt_forward,
                              score_candidates, score_continuations, score_split, shared_start)

PAIRS = [
    Pair("classify emotion : we won the game today", "joy"),
    Pair("classify emotion : my flight got cancelled again so terrible", "anger"),
    Pair("classify emotion : sad day", "sad"),
    Pair("classify emotion : i can't believe this outrageous news , very tired", "fear"),
]
LABELS = ["anger", "fear", "joy", "sad", "surprise"]


def direct_loglik(model, tokenizer, pair, response):
    """One unpadded forward pass over prompt + completion: the reference computation."""
    prompt, completion = encode(tokenizer, pair, response)
    ids = torch.tensor([prompt + completion])
    with torch.no_grad():
        logp = torch.log_softmax(model(ids).logits[0].float(), dim=-1)
    return sum(float(logp[len(prompt) - 1 + j, t]) for j, t in enumerate(completion)), len(completion)


@pytest.mark.parametrize("arch", ["llama", "gemma", "llama-plain"])
def test_shared_cache_scores_equal_direct_ones(arch, tiny_llama, tiny_gemma, word_tokenizer):
    model = tiny_gemma if arch == "gemma" else tiny_llama
    tokenizer = word_tokenizer
    if arch.endswith("plain"):
        tokenizer = copy.deepcopy(word_tokenizer)
        tokenizer.chat_template = None
    scores = score_candidates(model, tokenizer, PAIRS, [LABELS] * len(PAIRS),
                              reference=[LABELS.index(p.response) for p in PAIRS], batch_size=3)
    for i, pair in enumerate(PAIRS):
        for k, label in enumerate(LABELS):
            expected, length = direct_loglik(model, tokenizer, pair, label)
            assert scores.loglik[i, k] == pytest.approx(expected, abs=1e-4)
            assert scores.tokens[i, k] == length
        prompt, completion = encode(tokenizer, pair, pair.response)
        with torch.no_grad():
            argmax = int(model(torch.tensor([prompt])).logits[0, -1].argmax())
        assert scores.first_token_hit[i] == (argmax == completion[0])


def test_the_shared_start_keeps_a_token_of_every_prompt_to_itself():
    assert shared_start([[1, 2, 3, 4], [1, 2, 3, 5, 6]]) == 3
    assert shared_start([[1, 2], [1, 2, 3]]) == 1  # the first prompt keeps its last token
    assert shared_start([[1, 2, 3]]) == 2
    assert shared_start([[7, 2], [1, 2]]) == 0


@pytest.mark.parametrize("arch, shared", [("llama", 20), ("gemma", 8), ("gemma", 20)])
def test_a_shared_start_computed_once_gives_the_direct_logits_and_cache(arch, shared, tiny_llama, tiny_gemma):
    """The shared part is computed once; every row's last logits and the next step from the repeated cache equal
    an unpadded forward pass of that row alone. With Gemma's sliding window of 16, 8 shared ids fit (they are
    split off), 20 do not (the rows are computed whole)."""
    model = tiny_gemma if arch == "gemma" else tiny_llama
    start = [5 + (k % 40) for k in range(shared)]
    prompts = [start + [60, 61], start + [62], start + [63, 64, 65, 66]]
    calls = []
    hook = model.register_forward_pre_hook(lambda module, args, kwargs: calls.append(kwargs["input_ids"].shape),
                                           with_kwargs=True)
    with torch.no_grad():
        try:
            out, mask = prompt_forward(model, 0, prompts, following=1)
        finally:
            hook.remove()
        split = arch == "llama" or shared == 8
        assert calls == ([(1, shared), (3, 4)] if split else [(3, shared + 4)])
        assert mask.shape == (3, shared + 4) and mask.sum(-1).tolist() == [shared + 2, shared + 1, shared + 4]
        following = torch.tensor([[70], [71], [72]])
        step = model(input_ids=following, attention_mask=torch.cat([mask, torch.ones(3, 1, dtype=mask.dtype)], 1),
                     position_ids=mask.sum(-1)[:, None], use_cache=True,
                     **{cache_argument(model): output_cache(out)})
        for r, prompt in enumerate(prompts):
            direct = model(torch.tensor([prompt + [70 + r]])).logits[0]
            torch.testing.assert_close(out.logits[r, -1], direct[-2], atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(step.logits[r, -1], direct[-1], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("arch", ["llama", "gemma"])
def test_continuations_of_one_and_of_several_tokens_score_as_directly(arch, tiny_llama, tiny_gemma):
    """Only continuations longer than one token go on from the cache; each sums its own tokens' log-probabilities."""
    model = tiny_gemma if arch == "gemma" else tiny_llama
    prompts = [[1, 9, 10, 11], [1, 9, 12], [1, 9, 13, 14, 15]]
    options = [[[20], [21, 22], [23]], [[24], [25], [26]], [[27, 28, 29], [30], [31, 32]]]
    scored = score_continuations(model, 0, prompts, options, batch_size=2)
    for i, prompt in enumerate(prompts):
        for k, option in enumerate(options[i]):
            with torch.no_grad():
                logp = torch.log_softmax(model(torch.tensor([prompt + option])).logits[0].float(), -1)
            expected = sum(float(logp[len(prompt) - 1 + j, t]) for j, t in enumerate(option))
            assert scored.loglik[i, k] == pytest.approx(expected, abs=1e-4)
            assert scored.tokens[i, k] == len(option)


def test_completion_is_what_training_sees(word_tokenizer):
    prompt, completion = encode(word_tokenizer, PAIRS[0], "joy")
    assert word_tokenizer.decode(completion).split() == ["joy", "</s>"]
    rendered = word_tokenizer.apply_chat_template([{"role": "user", "content": PAIRS[0].prompt}],
                                                  add_generation_prompt=True, tokenize=False)
    assert prompt == word_tokenizer(rendered, add_special_tokens=False)["input_ids"]
    plain = copy.deepcopy(word_tokenizer)
    plain.chat_template = None
    _, completion = encode(plain, PAIRS[0], "joy")
    assert plain.decode(completion).split() == ["joy", "</s>"]  # the eos TRL appends


def test_split_metrics_follow_the_scores(tiny_llama, word_tokenizer):
    result = score_split(tiny_llama, word_tokenizer, PAIRS, LABELS, batch_size=2)
    logliks = np.array([[direct_loglik(tiny_llama, word_tokenizer, p, label)[0] for label in LABELS] for p in PAIRS])
    predicted = logliks.argmax(axis=1)
    gold = np.array([LABELS.index(p.response) for p in PAIRS])
    assert result["accuracy"] == pytest.approx(np.mean(predicted == gold))
    assert result["predictions"] == [LABELS[k] for k in predicted]
    assert result["macro_f1"] == pytest.approx(macro_f1(gold, predicted))
    nll = -sum(direct_loglik(tiny_llama, word_tokenizer, p, p.response)[0] for p in PAIRS)
    tokens = sum(direct_loglik(tiny_llama, word_tokenizer, p, p.response)[1] for p in PAIRS)
    assert result["token_loss"] == pytest.approx(nll / tokens, abs=1e-5)
    assert result["n"] == 4 and result["seconds"] >= 0
    open_ended = score_split(tiny_llama, word_tokenizer, PAIRS, None)
    assert open_ended["accuracy"] is None and open_ended["macro_f1"] is None
    assert open_ended["token_loss"] == pytest.approx(result["token_loss"], abs=1e-5)
    assert open_ended["first_token_accuracy"] == result["first_token_accuracy"]


def test_macro_f1_by_hand():
    gold = np.array([0, 0, 1, 1, 2])
    pred = np.array([0, 1, 1, 1, 0])
    # label 0: tp 1 fp 1 fn 1 -> 0.5; label 1: tp 2 fp 1 fn 0 -> 0.8; label 2: tp 0 -> 0
    assert macro_f1(gold, pred) == pytest.approx((0.5 + 0.8 + 0.0) / 3)
    assert macro_f1(gold, gold) == 1.0


def test_label_sets():
    from sftscope.data import Splits

    splits = Splits([Pair("a", "joy"), Pair("b", "anger")], [Pair("d", "surprise")], [Pair("c", "fear")])
    assert label_set(splits) == ["anger", "fear", "joy", "surprise"]
    assert label_set(splits, limit=3) is None  # too many distinct responses: open-ended
    assert label_set(splits, labels=["joy", "anger", "fear", "surprise", "love"]) == ["anger", "fear", "joy", "love", "surprise"]
    with pytest.raises(SftscopeError, match="test example 0: response 'fear' is not in data.labels"):
        label_set(splits, labels=["joy", "anger", "surprise"])
    with pytest.raises(SftscopeError, match="validation example 0: response 'surprise' is not in data.labels"):
        label_set(splits, labels=["joy", "anger", "fear"])
    with pytest.raises(SftscopeError, match="not one of the labels"):
        score_split(None, None, [Pair("a", "love")], ["joy"])
