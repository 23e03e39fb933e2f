"""Constructed tables shared by the tests (imported as ``helpers``)."""

import pandas as pd


def effects_frame(spec, model="target", split="train", bias=0.3):
    """spec: {(sample, step): {(kind, mask): effect}} -> effects rows (plus a bias row each).

    ``bias`` may be a number or a {sample: number} mapping.
    """
    rows = []
    for (sample, step), effects in spec.items():
        b = bias[sample] if isinstance(bias, dict) else bias
        rows.append(dict(model=model, split=split, sample=sample, step=step, kind="AND", bitmask=0, order=0, effect=b))
        for (kind, mask), effect in effects.items():
            rows.append(dict(model=model, split=split, sample=sample, step=step, kind=kind, bitmask=mask,
                             order=int(mask).bit_count(), effect=effect))
    return pd.DataFrame(rows)


WORDS = (
    "<pad> <unk> <s> </s> <user> <assistant> the a is was my flight got cancelled again i can't believe "
    "this outrageous happy joy anger sad fear love surprise today we won game friends tired so very "
    "classify emotion text : . , ! ? and of to it movie great terrible day news"
)
TEMPLATE_WORDS = "[ ] inst / system you are qwen created by alibaba cloud helpful assistant < > | im start end _ eot id header model turn of begin"


def word_tokenizer(chat_template: str | None, *, bos: str = "<s>", eos: str = "</s>"):
    """A fast word-level tokenizer (offsets for players) with the given chat template, built offline."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = list(dict.fromkeys((WORDS + " " + TEMPLATE_WORDS).split()))
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>", bos_token=bos,
                                   eos_token=eos)
    fast.chat_template = chat_template
    return fast


def bpe_tokenizer(chat_template: str, texts: list[str]):
    """A byte-level BPE tokenizer trained on ``texts`` (vocabulary < 512), for families whose tokenizer class
    transformers picks from the model type (Qwen2 rebuilds a byte-level pre-tokenizer around the vocabulary)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    fast.chat_template = chat_template
    return fast
