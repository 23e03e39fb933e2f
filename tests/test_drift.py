"""Drift from the base model: every measure equals a direct computation; a model against itself drifts by exactly 0."""

import copy
import json

import numpy as np
import pytest
import torch

from sftscope.drift import (
    DriftScorer, GeneralSet, Item, StateScores, drift_numbers, encode_item, greedy_answers, load_general_set,
    passage_tokens, prompt_ids, read_general_prompts, starts_with_label,
)
from sftscope.errors import SftscopeError
from sftscope.models import zero_adapter

PROMPTS = ("what is the movie of the day ?", "we won the game today", "my flight got cancelled again",
           "i can't believe this news", "the friends are tired", "great day of the game")
PASSAGES = ("the movie was great and the day was great .", "my friends and i won the game today , so happy .",
            "this news is terrible and i was tired .")
ITEMS = (Item("what is the game ?", ("movie", "game", "news", "day"), 1),
         Item("the day was ?", ("great", "terrible", "sad", "tired"), 0),
         Item("we won the ?", ("flight", "news", "game", "movie"), 2))
GENERAL = GeneralSet(PROMPTS, PASSAGES, ITEMS)
LABELS = ["anger", "joy", "fear"]


def with_adapters(model, *, scales=(0.0, 0.3)):
    """A PeftModel with LoRA adapters 'a0', 'a1', ... whose B matrices are scaled random (0: a fresh adapter)."""
    from peft import LoraConfig, get_peft_model

    model = copy.deepcopy(model)
    config = LoraConfig(r=2, lora_alpha=4, target_modules="all-linear", task_type="CAUSAL_LM")
    peft = get_peft_model(model, config, adapter_name="a0")
    for k in range(1, len(scales)):
        peft.add_adapter(f"a{k}", config)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, param in peft.named_parameters():
            for k, scale in enumerate(scales):
                if f"lora_B.a{k}." in name:
                    param.copy_(scale * torch.randn(param.shape, generator=generator))
    return peft.eval()


@pytest.fixture(scope="module")
def scored(tiny_llama, word_tokenizer):
    peft = with_adapters(tiny_llama)
    with peft.disable_adapter():
        answers = greedy_answers(peft, word_tokenizer, PROMPTS, max_new_tokens=6)
    scorer = DriftScorer(word_tokenizer, GENERAL, answers, LABELS, batch_size=4)
    with peft.disable_adapter():
        scores = {None: scorer.base(peft)}
    for name in ("a0", "a1"):
        peft.set_adapter(name)
        scores[name] = scorer.state(peft)
    return peft, answers, scores


def logp_along(model, ids):
    with torch.no_grad():
        return torch.log_softmax(model(torch.tensor([ids])).logits[0].float(), dim=-1)


def test_the_base_model_and_a_fresh_adapter_drift_by_exactly_zero(scored):
    _, answers, scores = scored
    tokens = [len(a) for a in answers]
    for state in (None, "a0"):  # the base against itself; a fresh LoRA (B = 0) is the base model
        numbers = drift_numbers(scores[None], scores[state], answer_tokens=tokens,
                                passage_tokens=[1] * len(PASSAGES), labels=LABELS)
        assert numbers["kl"]["mean"] == 0.0 and numbers["kl"]["low"] == 0.0 == numbers["kl"]["high"]
        assert numbers["general_nll"]["change"] == 0.0 and numbers["knowledge"]["change"] == 0.0
        assert numbers["knowledge"]["lost"] == numbers["knowledge"]["gained"] == 0
        assert numbers["format"]["agreement"] == 1.0
    assert drift_numbers(scores[None], scores["a1"], answer_tokens=tokens, passage_tokens=[1] * 3,
                         labels=LABELS)["kl"]["mean"] > 0


def test_greedy_answers_are_what_one_unbatched_greedy_decode_gives(scored, word_tokenizer):
    peft, answers, _ = scored
    with peft.disable_adapter():
        for prompt, answer in zip(PROMPTS, answers):
            ids = prompt_ids(word_tokenizer, prompt)
            out = []
            for _ in range(6):
                token = int(logp_along(peft, ids + out)[-1].argmax())
                out.append(token)
                if token == word_tokenizer.eos_token_id:
                    break
            assert answer == out


def test_kl_and_agreement_equal_a_direct_computation(scored, word_tokenizer):
    peft, answers, scores = scored
    for i, (prompt, answer) in enumerate(zip(PROMPTS, answers)):
        ids = prompt_ids(word_tokenizer, prompt)
        positions = slice(len(ids) - 1, len(ids) - 1 + len(answer))
        with peft.disable_adapter():
            base = logp_along(peft, ids + answer)[positions]
        peft.set_adapter("a1")
        mine = logp_along(peft, ids + answer)[positions]
        kl = float((base.exp() * (base - mine)).sum())
        assert scores["a1"].kl[i] == pytest.approx(kl, abs=1e-5)
        assert scores["a1"].agrees[i] == bool(torch.equal(mine.argmax(-1), base.argmax(-1)))


def test_general_nll_equals_a_direct_computation(scored, word_tokenizer):
    peft, _, scores = scored
    peft.set_adapter("a1")
    for k, passage in enumerate(PASSAGES):
        ids = word_tokenizer(passage)["input_ids"]
        logp = logp_along(peft, ids)
        nll = -sum(float(logp[t - 1, ids[t]]) for t in range(1, len(ids)))  # labels shifted as in training
        assert scores["a1"].nll[k] == pytest.approx(nll, abs=1e-4)
    assert passage_tokens(word_tokenizer, GENERAL) == [len(word_tokenizer(p)["input_ids"]) - 1 for p in PASSAGES]


def test_acc_norm_equals_a_direct_computation(scored, word_tokenizer):
    peft, _, scores = scored
    peft.set_adapter("a1")
    for k, item in enumerate(ITEMS):
        context, options = encode_item(word_tokenizer, item)
        per_char = []
        for choice, option in zip(item.choices, options):
            logp = logp_along(peft, context + option)
            loglik = sum(float(logp[len(context) - 1 + j, t]) for j, t in enumerate(option))
            per_char.append(loglik / len(" " + choice))  # lm-evaluation-harness's acc_norm
        assert scores["a1"].correct[k] == (int(np.argmax(per_char)) == item.answer)


def test_lost_and_gained_items_and_the_format_shares_are_counted_right():
    base = StateScores(kl=[0, 0, 0, 0], agrees=[True] * 4, label_start=[False, False, False, True], opening=[""] * 4,
                       nll=[10.0, 20.0], correct=[True, True, False, False, True])
    mine = StateScores(kl=[1.0, 3.0, 0.0, 0.0], agrees=[False, True, False, True], label_start=[True, True, False, True],
                       opening=[""] * 4, nll=[12.0, 21.0], correct=[False, True, True, False, False])
    numbers = drift_numbers(base, mine, answer_tokens=[2, 2, 4, 0], passage_tokens=[5, 5], labels=LABELS)
    assert numbers["kl"]["mean"] == pytest.approx(4.0 / 8)
    # draws of only the zero-token answer are undefined and left out, so the interval stays a number
    assert 0.0 <= numbers["kl"]["low"] <= 0.5 <= numbers["kl"]["high"]
    assert numbers["knowledge"] | {} == {**numbers["knowledge"], "base": 0.6, "checkpoint": 0.4, "lost": 2, "gained": 1}
    assert numbers["knowledge"]["change"] == pytest.approx(-0.2)
    assert numbers["knowledge"]["low"] <= -0.2 <= numbers["knowledge"]["high"]
    assert numbers["general_nll"]["change"] == pytest.approx(3.0 / 10)
    assert numbers["format"] == {"label_share": 0.75, "base_label_share": 0.25, "agreement": 0.5, "prompts": 4}


def test_a_label_answer_is_recognised_whole():
    assert starts_with_label("Joy", ["joy"]) and starts_with_label(" 'joy', clearly", ["joy"])
    assert starts_with_label("anger.", ["anger", "joy"]) and not starts_with_label("joyful day", ["joy"])
    assert not starts_with_label("The capital is Paris", ["joy", "anger"])
    # numeric and punctuated labels: whole, and their own leading punctuation ignored like the answer's
    assert starts_with_label("1 star", ["1", "5"]) and not starts_with_label("10 is the answer", ["1"])
    assert not starts_with_label("négatifé", ["négatif"]) and starts_with_label("(A) the first", ["(A)", "(B)"])
    assert starts_with_label("-1", ["-1", "+1"])


def test_zero_adapters_are_recognised(tmp_path, tiny_llama):
    peft = with_adapters(tiny_llama, scales=(0.0, 0.3))
    peft.save_pretrained(tmp_path)
    assert zero_adapter(tmp_path / "a0") if (tmp_path / "a0").exists() else zero_adapter(tmp_path)
    assert not zero_adapter(tmp_path / "a1")


def test_the_shipped_general_set_is_big_enough_and_about_nothing_of_the_tasks():
    from transformers import AutoTokenizer

    general = load_general_set()
    assert len(general.prompts) >= 200 and len(general.passages) >= 100 and len(general.items) >= 300
    assert len(set(general.prompts)) == len(general.prompts)
    assert all(len(item.choices) == 4 and 0 <= item.answer < 4 for item in general.items)
    labels = {"joy", "sadness", "anger", "fear", "surprise", "billing", "shipping", "technical", "account", "returns"}
    words = {w.strip("?.,!'\"").lower() for p in general.prompts for w in p.split()}
    assert not words & (labels | {"classify", "emotion", "ticket", "customer"})
    for prompt in ("What is the capital of France?", "How many legs does a spider have?",
                   "Translate 'good morning' into Spanish.", "Write a haiku about autumn leaves."):
        assert prompt in general.prompts  # the table, shown in the report
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(__import__("sftscope.models", fromlist=["x"]).embedded_model_dir(
            "smollm2-135m-instruct")))
    except Exception:  # noqa: BLE001 - the embedded model is optional in this test
        pytest.skip("the embedded SmolLM2 is not installed")
    assert sum(passage_tokens(tokenizer, general)) >= 20_000


def test_a_users_general_prompts_are_checked_line_by_line(tmp_path):
    good = tmp_path / "g.jsonl"
    good.write_text("".join(json.dumps({"prompt": f"question number {k}?"}) + "\n" for k in range(5)), encoding="utf-8")
    assert len(read_general_prompts(good)) == 5 and load_general_set(good).prompts[0] == "question number 0?"
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a"}\n{"text": "b"}\n', encoding="utf-8")
    with pytest.raises(SftscopeError, match=r"bad.jsonl:2: 'prompt' is missing or empty"):
        read_general_prompts(bad)
    few = tmp_path / "few.jsonl"
    few.write_text('{"prompt": "a"}\n', encoding="utf-8")
    with pytest.raises(SftscopeError, match="drift needs at least 4"):
        read_general_prompts(few)
    with pytest.raises(SftscopeError, match="not found"):
        read_general_prompts(tmp_path / "none.jsonl")


def test_a_limit_spreads_over_every_kind_of_general_prompt():
    import json as _json
    from importlib import resources

    kinds = [_json.loads(line)["kind"] for line in
             resources.files("sftscope").joinpath("datasets/general_prompts.jsonl").read_text("utf-8").splitlines()]
    whole = load_general_set()
    small = load_general_set(limit=20)
    assert (len(small.prompts), len(small.passages), len(small.items)) == (20, 20, 20)
    assert set(small.prompts) <= set(whole.prompts) and len(set(small.prompts)) == 20
    picked = {kinds[whole.prompts.index(p)] for p in small.prompts}
    assert picked == set(kinds)  # the file is ordered by kind: the first 20 would all be questions
    assert load_general_set(limit=10_000) == whole


@pytest.mark.parametrize("arch", ["llama", "gemma"])
def test_the_greedy_opening_and_the_answer_logits_of_one_pass_equal_direct_ones(arch, tiny_llama, tiny_gemma,
                                                                               word_tokenizer):
    """Prompt and base answer go through in one pass, then the cache is cut back for the greedy opening (Gemma's
    sliding-window layers cannot be cut: the prompt is computed again); both equal an unbatched computation."""
    model = tiny_gemma if arch == "gemma" else tiny_llama
    answers = greedy_answers(model, word_tokenizer, PROMPTS, max_new_tokens=6)
    scorer = DriftScorer(word_tokenizer, GENERAL, answers, LABELS, batch_size=4)
    scores = scorer.base(model)
    assert scorer.label_steps == 2
    for i, prompt in enumerate(PROMPTS):
        ids = prompt_ids(word_tokenizer, prompt)
        first = int(logp_along(model, ids)[-1].argmax())
        second = int(logp_along(model, ids + [first])[-1].argmax())
        assert scores.opening[i] == word_tokenizer.decode([first, second], skip_special_tokens=True)
        direct = logp_along(model, ids + answers[i])[len(ids) - 1 : len(ids) - 1 + len(answers[i])]
        torch.testing.assert_close(torch.log_softmax(scorer.base_logp[i].float(), -1), direct, atol=1e-4, rtol=1e-4)
