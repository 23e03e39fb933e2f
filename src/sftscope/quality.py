"""Task quality of one checkpoint on a whole split: the number a user keeps a checkpoint for.

Closed label sets (classification): every label is scored by the log-likelihood
of its *whole* completion (all its tokens and the end-of-turn tokens the
training target has) given the rendered prompt; the prediction is the label with
the highest score. Labels that share a first token ("sad" / "sadness") are
therefore told apart by their later tokens; exact ties go to the label that
comes first in the sorted label list. Accuracy and macro-F1 follow.

Open-ended responses: accuracy is ``None``; the first-token accuracy (the
argmax of the first response token is the reference's) and the mean per-token
loss of the reference response are reported instead (both are reported for
closed sets too).

Cost: one forward pass per batch of prompts (left-padded), whose key/value
cache is then shared by all candidate completions of each prompt, so a prompt
is computed once however many labels there are.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from .data import Pair, chat_messages, plain_prompt
from .errors import SftscopeError

MAX_LABELS = 20  # at most this many distinct responses (train and test together) form a closed label set


def label_set(train: Sequence[Pair], test: Sequence[Pair], labels: Sequence[str] | None = None,
              limit: int = MAX_LABELS) -> list[str] | None:
    """The closed label set (sorted), or ``None`` for open-ended responses.

    ``labels`` given by the user are checked against every response; otherwise
    the distinct responses form the set when there are at most ``limit`` of them.
    """
    if labels is not None:
        known = set(labels)
        if not known:
            raise SftscopeError("data.labels is empty: list the label strings, or leave it out")
        for split, pairs in (("train", train), ("test", test)):
            for index, pair in enumerate(pairs):
                if pair.response not in known:
                    raise SftscopeError(f"{split} example {index}: response {pair.response!r} is not in data.labels")
        return sorted(known)
    distinct = {p.response for p in train} | {p.response for p in test}
    return sorted(distinct) if len(distinct) <= limit else None


def encode(tokenizer, pair: Pair, response: str) -> tuple[list[int], list[int]]:
    """Prompt ids and completion ids exactly as TRL's SFTTrainer builds the training target.

    With a chat template: the prompt rendered with the generation prompt, the
    completion = the tokens where prompt+response starts to differ. Without one:
    ``prompt + "\\n"`` and ``response + eos``.
    """
    if getattr(tokenizer, "chat_template", None):
        messages = chat_messages(pair)
        prompt_text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        full_text = tokenizer.apply_chat_template(messages + [{"role": "assistant", "content": response}],
                                                  tokenize=False)
        prompt = tokenizer(prompt_text, add_special_tokens=False)["input_ids"]
        full = tokenizer(full_text, add_special_tokens=False)["input_ids"]
    else:
        text = plain_prompt(pair)
        prompt = tokenizer(text)["input_ids"]
        full = tokenizer(text + response + (tokenizer.eos_token or ""))["input_ids"]
    shared = 0
    while shared < min(len(prompt), len(full)) and prompt[shared] == full[shared]:
        shared += 1
    if shared == len(full):
        raise SftscopeError(f"response {response!r} adds no token to the prompt")
    return list(full[:shared]), list(full[shared:])


@dataclass
class Scores:
    """Per example: log-likelihood of every candidate, and whether the first response token is the argmax."""

    loglik: np.ndarray  # [examples, candidates], summed over each candidate's tokens
    tokens: np.ndarray  # [examples, candidates], completion lengths
    first_token_hit: np.ndarray  # [examples] for the reference response


def score_candidates(model, tokenizer, pairs: Sequence[Pair], candidates: Sequence[Sequence[str]], *,
                     reference: Sequence[int], batch_size: int = 16) -> Scores:
    """Log-likelihoods of ``candidates[i][k]`` as the response to ``pairs[i]`` (every row the same count).

    ``reference[i]`` is the index of the reference response among ``candidates[i]``.
    """
    import torch  # noqa: PLC0415

    count = len(candidates[0]) if candidates else 0
    if any(len(c) != count for c in candidates):
        raise SftscopeError("every example needs the same number of candidate responses")
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    loglik = np.zeros((len(pairs), count))
    lengths = np.zeros((len(pairs), count), dtype=np.int64)
    hits = np.zeros(len(pairs), dtype=bool)
    for start in range(0, len(pairs), batch_size):
        rows = range(start, min(start + batch_size, len(pairs)))
        encoded = [[encode(tokenizer, pairs[i], c) for c in candidates[i]] for i in rows]
        prompts = [e[0][0] for e in encoded]
        for e in encoded:  # the prompt is the same for every candidate of an example
            if any(p != e[0][0] for p, _ in e):
                raise SftscopeError("a candidate response changes how the prompt is tokenized")
        width = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), width), pad, dtype=torch.long)
        mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for r, p in enumerate(prompts):
            ids[r, width - len(p):] = torch.tensor(p)
            mask[r, width - len(p):] = 1
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        with torch.no_grad():
            out = model(input_ids=ids.to(device), attention_mask=mask.to(device), position_ids=positions.to(device),
                        use_cache=True)
            first = torch.log_softmax(out.logits[:, -1].float(), dim=-1)  # distribution of the first response token
            completions = [c for e in encoded for _, c in e]
            longest = max(len(c) for c in completions)
            cand = torch.full((len(completions), longest), pad, dtype=torch.long)
            cand_mask = torch.zeros((len(completions), longest), dtype=torch.long)
            for r, c in enumerate(completions):
                cand[r, : len(c)] = torch.tensor(c)
                cand_mask[r, : len(c)] = 1
            later = None
            if longest > 1:  # later tokens: continue every prompt's cache once per candidate
                cache = out.cache if "cache" in out else out.past_key_values
                cache.batch_repeat_interleave(count)
                lengths_real = mask.sum(-1).repeat_interleave(count)
                cont_mask = torch.cat([mask.repeat_interleave(count, 0), cand_mask[:, :-1]], dim=1)
                cont_pos = lengths_real[:, None] + torch.arange(longest - 1)[None]
                cont = model(input_ids=cand[:, :-1].to(device), attention_mask=cont_mask.to(device),
                             position_ids=cont_pos.to(device), use_cache=True, **{_cache_argument(model): cache})
                later = torch.log_softmax(cont.logits.float(), dim=-1).cpu()
        first = first.cpu()
        for r, i in enumerate(rows):
            for k in range(count):
                flat = r * count + k
                tokens = completions[flat]
                total = float(first[r, tokens[0]])
                for j in range(1, len(tokens)):
                    total += float(later[flat, j - 1, tokens[j]])
                loglik[i, k] = total
                lengths[i, k] = len(tokens)
            hits[i] = int(first[r].argmax()) == completions[r * count + reference[i]][0]
    return Scores(loglik, lengths, hits)


def _cache_argument(model) -> str:
    """``cache`` (transformers 5.2x) or ``past_key_values`` (earlier), whichever ``forward`` takes."""
    import inspect  # noqa: PLC0415

    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def score_split(model, tokenizer, pairs: Sequence[Pair], labels: Sequence[str] | None, *,
                batch_size: int = 16) -> dict:
    """Accuracy and macro-F1 (closed label sets), first-token accuracy and per-token loss, and the time taken."""
    if not pairs:
        raise SftscopeError("no examples to score")
    began = time.perf_counter()
    if labels is not None:
        labels = list(labels)
        index = {label: k for k, label in enumerate(labels)}
        missing = [p.response for p in pairs if p.response not in index]
        if missing:
            raise SftscopeError(f"response {missing[0]!r} is not one of the labels {labels}")
        scores = score_candidates(model, tokenizer, pairs, [labels] * len(pairs),
                                  reference=[index[p.response] for p in pairs], batch_size=batch_size)
        gold = np.array([index[p.response] for p in pairs])
        predicted = scores.loglik.argmax(axis=1)  # ties: the first label in sorted order
        reference_loglik = scores.loglik[np.arange(len(pairs)), gold]
        reference_tokens = scores.tokens[np.arange(len(pairs)), gold]
        accuracy = float(np.mean(predicted == gold))
        f1 = macro_f1(gold, predicted)
        predictions = [labels[k] for k in predicted]
    else:
        scores = score_candidates(model, tokenizer, pairs, [[p.response] for p in pairs], reference=[0] * len(pairs),
                                  batch_size=batch_size)
        reference_loglik, reference_tokens = scores.loglik[:, 0], scores.tokens[:, 0]
        accuracy = f1 = None
        predictions = None
    return {
        "n": len(pairs),
        "accuracy": accuracy,
        "macro_f1": f1,
        "first_token_accuracy": float(np.mean(scores.first_token_hit)),
        "token_loss": float(-reference_loglik.sum() / reference_tokens.sum()),
        "predictions": predictions,
        "seconds": round(time.perf_counter() - began, 3),
    }


def macro_f1(gold: np.ndarray, predicted: np.ndarray) -> float:
    """Unweighted mean F1 over the labels that occur in ``gold`` or ``predicted``."""
    f1s = []
    for label in np.union1d(gold, predicted):
        tp = int(np.sum((predicted == label) & (gold == label)))
        fp = int(np.sum((predicted == label) & (gold != label)))
        fn = int(np.sum((predicted != label) & (gold == label)))
        f1s.append(2 * tp / (2 * tp + fp + fn) if tp else 0.0)
    return float(np.mean(f1s))
