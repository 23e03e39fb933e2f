"""The paper's model families, as tiny random models with their real chat-template shapes: train, then analyze.

Qwen2 (q/k/v biases, a template that inserts its own system prompt), Llama with a
Llama-2 ``[INST]`` template and with a Llama-3 header template, Mistral, Gemma-3.
"""

import json

import numpy as np
import pytest
import torch

from helpers import bpe_tokenizer, word_tokenizer
from sftscope import MaskedGame, NaiveEngine, PrefixEngine, baseline_vector
from sftscope.analyze import analyze
from sftscope.config import AnalysisSettings, config_from_dict
from sftscope.players import target_token, tokenize_prompt
from sftscope.store import RunFolder
from sftscope.train import train

QWEN = (
    "{%- if messages[0]['role'] != 'system' %}<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. "
    "You are a helpful assistant.<|im_end|>\n{%- endif %}"
    "{%- for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{%- endfor %}"
    "{%- if add_generation_prompt %}<|im_start|>assistant\n{%- endif %}"
)
LLAMA2 = (
    "{%- for m in messages %}{%- if m['role'] == 'user' %}{{ bos_token + '[INST] ' + m['content'] + ' [/INST]' }}"
    "{%- elif m['role'] == 'assistant' %}{{ ' ' + m['content'] + ' ' + eos_token }}{%- endif %}{%- endfor %}"
)
LLAMA3 = (
    "{{ bos_token }}{%- for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n"
    "{{ m['content'] }}<|eot_id|>{%- endfor %}"
    "{%- if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{%- endif %}"
)
MISTRAL = (
    "{{ bos_token }}{%- for m in messages %}{%- if m['role'] == 'user' %}[INST] {{ m['content'] }} [/INST]"
    "{%- else %} {{ m['content'] }}{{ eos_token }}{%- endif %}{%- endfor %}"
)
GEMMA3 = (
    "{{ bos_token }}{%- for m in messages %}<start_of_turn>{{ 'model' if m['role'] == 'assistant' else m['role'] }}\n"
    "{{ m['content'] }}<end_of_turn>\n{%- endfor %}{%- if add_generation_prompt %}<start_of_turn>model\n{%- endif %}"
)


def tiny_model(arch: str):
    from transformers import (
        Gemma3ForCausalLM, Gemma3TextConfig, LlamaConfig, LlamaForCausalLM, MistralConfig, MistralForCausalLM,
        Qwen2Config, Qwen2ForCausalLM,
    )

    torch.manual_seed(3)
    common = dict(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=256)
    if arch == "qwen2":
        model = Qwen2ForCausalLM(Qwen2Config(**{**common, "vocab_size": 512}))
        assert model.model.layers[0].self_attn.q_proj.bias is not None  # the family's q/k/v biases
    elif arch == "mistral":
        model = MistralForCausalLM(MistralConfig(**common, sliding_window=24))
    elif arch == "gemma3":
        model = Gemma3ForCausalLM(Gemma3TextConfig(**{**common, "num_key_value_heads": 1}, head_dim=8,
                                                   sliding_window=16,
                                                   layer_types=["sliding_attention", "full_attention"]))
    else:
        model = LlamaForCausalLM(LlamaConfig(**common))
    return model.eval()


ARCHS = {"qwen2": QWEN, "llama2-template": LLAMA2, "llama3-template": LLAMA3, "mistral": MISTRAL, "gemma3": GEMMA3}
PROMPT = "classify emotion : my flight got cancelled again today , i can't believe this outrageous day"
TEXTS = [PROMPT, "classify emotion : we won the game today so very friends great joy anger",
         "You are Qwen, created by Alibaba Cloud. You are a helpful assistant. system user assistant",
         "my flight got cancelled again so today tired terrible"]


@pytest.fixture(scope="module", params=list(ARCHS))
def arch_run(request, tmp_path_factory):
    arch = request.param
    root = tmp_path_factory.mktemp(arch)
    model = tiny_model(arch)
    # transformers gives a Qwen2 folder its own tokenizer class, which needs a byte-level BPE vocabulary
    tokenizer = bpe_tokenizer(QWEN, TEXTS) if arch == "qwen2" else word_tokenizer(ARCHS[arch])
    folder = root / "model"
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    rows = [{"prompt": f"classify emotion : we won the game today {w} great", "completion": "joy"}
            for w in ("so", "very", "friends")]
    rows += [{"prompt": f"classify emotion : my flight got cancelled again {w} terrible", "completion": "anger"}
             for w in ("so", "today", "tired")]
    (root / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    config = config_from_dict({
        "output_dir": str(root / "run"), "model": str(folder), "batch_size": 2, "max_steps": 2, "checkpoint_every": 2,
        "learning_rate": 5e-2, "max_length": 64, "lora": {"r": 2, "alpha": 4},
        "data": {"train": str(root / "d.jsonl"), "test_ratio": 0.34, "max_train_examples": None},
    })
    return arch, train(config), model, tokenizer


def test_train_then_analyze(arch_run):
    arch, run, _, _ = arch_run
    settings = AnalysisSettings(samples_per_split=1, n_players=3)
    summary = analyze(run, settings)
    assert summary["checkpoints"] == [0, 1, 2]
    assert summary["recommended_step"] in summary["checkpoints"]
    assert all(q["accuracy"] is not None for q in summary["quality"])  # joy / anger: a closed label set
    # one train and one validation probe, and the general probes, at each of the three checkpoints
    units = RunFolder(run).units()
    assert len(units) == 3 * (2 + settings.general_samples)
    assert sum(u.name.startswith("general-") for u in units) == 3 * settings.general_samples
    assert [row["step"] for row in summary["drift"]["per_checkpoint"]] == [0, 1, 2]


def test_players_come_from_the_user_content_only(arch_run):
    arch, _, _, tokenizer = arch_run
    rendered = tokenize_prompt(tokenizer, PROMPT)
    start, end = rendered.content_span
    assert rendered.text[start:end] == PROMPT
    if arch == "qwen2":
        assert rendered.text.index("You are Qwen") < start  # the template's own system prompt comes first
    words = [rendered.words[i] for i in rendered.candidates]
    assert words and all(start <= w.char_span[0] and w.char_span[1] <= end for w in words)
    assert not {"qwen", "alibaba", "helpful", "system"} & {w.text.lower() for w in words}


def test_prefix_engine_equals_naive(arch_run):
    _, _, model, tokenizer = arch_run
    rendered = tokenize_prompt(tokenizer, PROMPT)
    words = [rendered.words[i] for i in rendered.candidates]
    chosen = [words[0], words[2], words[3], words[-1]]  # first, two adjacent, last
    game = MaskedGame(tuple(rendered.input_ids), tuple(w.token_span for w in chosen), target_token(tokenizer, "anger"))
    base = baseline_vector(model, tokenizer, "mean")
    np.testing.assert_allclose(PrefixEngine(model, base).values(game), NaiveEngine(model, base).values(game), atol=1e-4)
