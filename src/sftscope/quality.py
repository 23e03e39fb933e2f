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
from typing import Mapping, Sequence

import numpy as np

from .data import Pair, chat_messages, plain_prompt
from .errors import SftscopeError

MAX_LABELS = 20  # at most this many distinct responses (train and test together) form a closed label set


def label_set(splits: Mapping[str, Sequence[Pair]] | Sequence[Sequence[Pair]], labels: Sequence[str] | None = None,
              limit: int = MAX_LABELS) -> list[str] | None:
    """The closed label set (sorted), or ``None`` for open-ended responses.

    ``splits``: the pairs of every split (a ``data.Splits``, a mapping of split
    name to pairs, or a list of pair lists). ``labels`` given by the user are
    checked against every response; otherwise the distinct responses form the
    set when there are at most ``limit`` of them.
    """
    named = splits._asdict() if hasattr(splits, "_asdict") else (
        dict(splits) if isinstance(splits, Mapping) else {f"split {k}": pairs for k, pairs in enumerate(splits)})
    if labels is not None:
        known = set(labels)
        if not known:
            raise SftscopeError("data.labels is empty: list the label strings, or leave it out")
        for split, pairs in named.items():
            for index, pair in enumerate(pairs):
                if pair.response not in known:
                    raise SftscopeError(f"{split} example {index}: response {pair.response!r} is not in data.labels")
        return sorted(known)
    distinct = {p.response for pairs in named.values() for p in pairs}
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
    count = len(candidates[0]) if candidates else 0
    if any(len(c) != count for c in candidates):
        raise SftscopeError("every example needs the same number of candidate responses")
    prompts, continuations = [], []
    for pair, options in zip(pairs, candidates):
        encoded = [encode(tokenizer, pair, c) for c in options]
        if any(prompt != encoded[0][0] for prompt, _ in encoded):  # the prompt is the same for every candidate
            raise SftscopeError("a candidate response changes how the prompt is tokenized")
        prompts.append(encoded[0][0])
        continuations.append([completion for _, completion in encoded])
    scored = score_continuations(model, pad_id(tokenizer), prompts, continuations, batch_size=batch_size)
    hits = np.array([scored.first_argmax[i] == continuations[i][reference[i]][0] for i in range(len(pairs))],
                    dtype=bool)
    return Scores(scored.loglik, scored.tokens, hits)


def pad_id(tokenizer) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0


@dataclass
class Continuations:
    """Per prompt: the summed log-probability and length of each continuation, and the argmax after the prompt."""

    loglik: np.ndarray  # [prompts, continuations]
    tokens: np.ndarray  # [prompts, continuations]
    first_argmax: np.ndarray  # [prompts]: the most likely next token after the prompt


def last_position(ids) -> "torch.Tensor":
    """``logits_to_keep`` for the last column as an index tensor: the same logits as ``1``, but a PEFT-wrapped
    model then multiplies a contiguous hidden state (with the slice, bfloat16 CPU kernels took ten times longer)."""
    import torch  # noqa: PLC0415

    return torch.tensor([ids.shape[1] - 1], device=ids.device)


def left_padded(prompts: Sequence[Sequence[int]], pad: int):
    """Token ids, attention mask and positions of left-padded prompts (every prompt ends in the last column)."""
    import torch  # noqa: PLC0415

    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for r, prompt in enumerate(prompts):
        ids[r, width - len(prompt):] = torch.tensor(list(prompt))
        mask[r, width - len(prompt):] = 1
    return ids, mask, (mask.cumsum(-1) - 1).clamp(min=0)


def shared_start(prompts: Sequence[Sequence[int]]) -> int:
    """How many leading ids every prompt shares, less what would leave one of them empty (each keeps a token)."""
    shortest = min(len(p) for p in prompts)
    first = prompts[0]
    for k in range(shortest - 1):
        if any(p[k] != first[k] for p in prompts):
            return k
    return max(0, shortest - 1)


def sliding_window(model) -> int | None:
    """The shortest attention window of the model's layers (None: every layer sees the whole sequence)."""
    config = getattr(model, "config", None)
    window = getattr(config, "sliding_window", None)
    if not window or getattr(config, "use_sliding_window", True) is False:
        return None
    types = getattr(config, "layer_types", None)
    if types is not None and not any("sliding" in str(t) for t in types):
        return None
    return int(window)


def output_cache(out):
    """The key/value cache of a model output: ``cache`` (transformers 5.2x) or ``past_key_values`` (earlier)."""
    return out.cache if "cache" in out else out.past_key_values


def prompt_forward(model, pad: int, prompts: Sequence[Sequence[int]], following: int = 0,
                   tails: Sequence[Sequence[int]] | None = None):
    """The model's output at the last position of left-padded prompts, and their attention mask.

    ``tails`` (one per prompt, any may be empty) are teacher-forced after the
    prompts in the same pass, right-padded: the output then also has the logits
    at every tail position (``logits[:, 0]`` is the last prompt position,
    ``logits[:, 1 + j]`` tail token ``j``'s), and the cache covers the tails
    too (``mask`` is still the prompts' alone).

    The ids every prompt of the batch begins with (a chat template's system
    turn and role header: most of a short prompt) are computed once, at batch
    size 1, and their cache repeated for every row; the rest is left-padded
    after them, positions counted on from the shared part. The cache in the
    output covers ``mask.shape[1]`` positions. A sliding-window layer counts
    its window in cache slots, padding included, so the shared part is only
    split off when the padded rows and the ``following`` tokens still fit in
    the window (then the result is the same as without sharing).
    """
    import torch  # noqa: PLC0415

    device = next(model.parameters()).device
    start = shared_start(prompts)
    window = sliding_window(model)
    if start and window is not None and max(len(p) for p in prompts) + following >= window:
        start = 0
    ids, mask, positions = left_padded([p[start:] for p in prompts], pad)
    extra = {}
    if start:
        head = model(input_ids=torch.tensor([list(prompts[0][:start])], device=device), use_cache=True,
                     logits_to_keep=1)
        cache = output_cache(head)
        cache.batch_repeat_interleave(len(prompts))
        mask = torch.cat([torch.ones((len(prompts), start), dtype=mask.dtype), mask], dim=1)
        positions = positions + start
        extra = {cache_argument(model): cache}
    keep = last_position(ids)
    width = max((len(t) for t in tails), default=0) if tails is not None else 0
    full_mask = mask
    if width:
        tail_ids, tail_mask = right_padded(tails, pad, width=width)
        tail_positions = mask.sum(-1)[:, None] + torch.arange(width)[None]
        ids, positions = torch.cat([ids, tail_ids], dim=1), torch.cat([positions, tail_positions], dim=1)
        full_mask = torch.cat([mask, tail_mask], dim=1)
        keep = torch.arange(int(keep[0]), int(keep[0]) + width + 1)
    out = model(input_ids=ids.to(device), attention_mask=full_mask.to(device), position_ids=positions.to(device),
                use_cache=True, logits_to_keep=keep.to(device), **extra)
    return out, mask


def right_padded(rows: Sequence[Sequence[int]], pad: int, width: int | None = None):
    """Token ids and mask of right-padded rows (``width``: at least this many columns)."""
    import torch  # noqa: PLC0415

    width = max([len(r) for r in rows] + [width or 0])
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for r, row in enumerate(rows):
        ids[r, : len(row)] = torch.tensor(list(row), dtype=torch.long)
        mask[r, : len(row)] = 1
    return ids, mask


def score_continuations(model, pad: int, prompts: Sequence[Sequence[int]],
                        continuations: Sequence[Sequence[Sequence[int]]], *, batch_size: int = 16) -> Continuations:
    """Summed log-probabilities of every continuation of every prompt, the prompt computed once.

    One forward pass per batch of prompts (left-padded after the ids they all
    share, which are computed once: ``prompt_forward``); its key/value cache is
    then repeated for every continuation of more than one token and continued
    over all of them together (right-padded), so a prompt's cost is paid once
    however many continuations it has; log-probabilities are taken only where a
    continuation has a token. Every prompt has the same number of continuations.
    """
    import torch  # noqa: PLC0415

    count = len(continuations[0]) if continuations else 0
    device = next(model.parameters()).device
    loglik = np.zeros((len(prompts), count))
    lengths = np.zeros((len(prompts), count), dtype=np.int64)
    first_argmax = np.zeros(len(prompts), dtype=np.int64)
    for start in range(0, len(prompts), batch_size):
        rows = range(start, min(start + batch_size, len(prompts)))
        completions = [c for i in rows for c in continuations[i]]
        with torch.no_grad():
            cand, cand_mask = right_padded(completions, pad)
            out, mask = prompt_forward(model, pad, [prompts[i] for i in rows], following=cand.shape[1])
            first = torch.log_softmax(out.logits[:, -1].float(), dim=-1)  # distribution of the first continuation token
            first = first.cpu()
            totals = first.repeat_interleave(count, 0).gather(1, cand[:, :1]).squeeze(1)  # [rows * count]
            longer = [j for j, c in enumerate(completions) if len(c) > 1]
            if longer:  # later tokens: continue the prompt's cache for each continuation that has them
                cache = output_cache(out)
                owner = torch.tensor([j // count for j in longer])
                cache.batch_select_indices(owner.to(device))  # a row of the cache per continuation (repeats allowed)
                feed, feed_mask = cand[longer, :-1], cand_mask[longer, :-1]
                cont_mask = torch.cat([mask[owner], feed_mask], dim=1)
                cont_pos = mask.sum(-1)[owner][:, None] + torch.arange(feed.shape[1])[None]
                cont = model(input_ids=feed.to(device), attention_mask=cont_mask.to(device),
                             position_ids=cont_pos.to(device), use_cache=True, **{cache_argument(model): cache})
                # log-probabilities only where a continuation has a token (padding is most of a short batch)
                real = cand_mask[longer, 1:].bool()
                logp = torch.log_softmax(cont.logits[real.to(device)].float(), dim=-1).cpu()
                picked = logp.gather(1, cand[longer, 1:][real][:, None]).squeeze(1)
                row_of = torch.tensor(longer)[:, None].expand_as(real)[real]
                totals.index_add_(0, row_of, picked)
        for r, i in enumerate(rows):
            for k in range(count):
                loglik[i, k] = float(totals[r * count + k])
                lengths[i, k] = len(completions[r * count + k])
            first_argmax[i] = int(first[r].argmax())
    return Continuations(loglik, lengths, first_argmax)


def cache_argument(model) -> str:
    """``cache`` (transformers 5.2x) or ``past_key_values`` (earlier), whichever the model's ``forward`` takes.

    A PEFT model's ``forward`` takes ``**kwargs``: its base model's signature decides (the deprecated name
    still works there, but several times slower).
    """
    import inspect  # noqa: PLC0415

    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "cache" if "cache" in inspect.signature(inner.forward).parameters else "past_key_values"


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
