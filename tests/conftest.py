import json
import os

import numpy as np
import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


def planted_game(n, planted, rng=None, noise=0.0):
    """A game made of given AND and OR interactions: {("AND", mask): effect, ...} plus bias 0.5."""
    size = 1 << n
    masks = np.arange(size)
    values = np.full(size, 0.5)
    for (kind, mask), effect in planted.items():
        if kind == "AND":
            values += effect * ((masks & mask) == mask)
        else:
            values += effect * ((masks & mask) != 0)
    if noise:
        values += noise * rng.standard_normal(size)
    return values


@pytest.fixture(scope="session")
def tiny_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
    )
    return LlamaForCausalLM(config).eval()


@pytest.fixture(scope="session")
def tiny_gemma():
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    torch.manual_seed(1)
    config = Gemma3TextConfig(
        vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=1, head_dim=8, max_position_embeddings=256,
        sliding_window=16, layer_types=["sliding_attention", "full_attention"],
    )
    return Gemma3ForCausalLM(config).eval()


@pytest.fixture(scope="session")
def word_tokenizer():
    """A fast word-level tokenizer with a chat template, built offline."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = (
        "<pad> <unk> <s> </s> <user> <assistant> the a is was my flight got cancelled again i can't believe "
        "this outrageous happy joy anger sad fear love surprise today we won game friends tired so very "
        "classify emotion text : . , ! ? and of to it movie great terrible day news"
    ).split()
    vocab = {w: i for i, w in enumerate(words)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>", bos_token="<s>", eos_token="</s>")
    fast.chat_template = (
        "{% for m in messages %}<{{ m['role'] }}> {{ m['content'] }} </s> {% endfor %}"
        "{% if add_generation_prompt %}<assistant> {% endif %}"
    )
    return fast


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, tiny_llama, word_tokenizer):
    from sftscope.config import config_from_dict
    from sftscope.train import train

    root = tmp_path_factory.mktemp("run")
    model_dir = root / "tiny-model"
    tiny_llama.save_pretrained(model_dir)
    word_tokenizer.save_pretrained(model_dir)
    rows = [{"prompt": f"classify emotion : we won the game today {w}", "completion": "joy"} for w in ("so", "very", "great")]
    rows += [{"prompt": f"classify emotion : my flight got cancelled again {w}", "completion": "anger"}
             for w in ("so", "today", "terrible")]
    data = root / "d.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    config = config_from_dict({
        "output_dir": str(root / "run"), "model": str(model_dir), "batch_size": 2, "max_steps": 4,
        "checkpoint_every": 2, "learning_rate": 5e-2, "max_length": 64, "lora": {"r": 2, "alpha": 4},
        "data": {"train": str(data), "test_ratio": 0.34, "max_train_examples": None},
    })
    return train(config)


@pytest.fixture
def restore_logging():
    """``sftscope.cli.main`` routes logging and warnings for the terminal; give the next test the state it had."""
    import logging
    import warnings

    root = logging.getLogger()
    handlers, level, show = list(root.handlers), root.level, warnings.showwarning
    yield
    for handler in list(root.handlers):
        root.removeHandler(handler)
    for handler in handlers:
        root.addHandler(handler)
    root.setLevel(level)
    warnings.showwarning = show
