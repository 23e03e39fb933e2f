"""General-capability drift: what a checkpoint costs the model outside its task.

Every checkpoint is compared with the base model (its adapter disabled, which
is the model before SFT) on general data that has nothing to do with the task:

- ``kl``: mean per-token KL(base || checkpoint) over the base model's own
  greedy answers to the general prompts (at most ``max_new_tokens`` tokens,
  generated once per run and stored), with a 95% bootstrap interval over prompts;
- ``general_nll``: the change of per-token negative log-likelihood on general
  text passages (labels shifted as in training: token t is predicted from the
  tokens before it), with a 95% bootstrap interval over passages;
- ``knowledge``: multiple-choice accuracy, options scored by log-likelihood per
  character (lm-evaluation-harness's ``acc_norm``), paired with the base model:
  items lost and gained, and a 95% bootstrap interval for the change;
- ``format``: the share of general prompts whose greedy answer is (or begins
  with) one of the task's labels, and the share whose greedy answer equals the
  base model's.

All checkpoints are scored in one pass over the data: each batch is computed
once with the adapter disabled (the base model's share of the work), then once
per checkpoint's adapter, so no base-model distribution is ever stored. A
checkpoint's greedy answer equals the base model's when its most likely token
is the base model's at every position of the base answer, so agreement needs
no generation of its own; the label check decodes only as many tokens as the
longest label.
"""

from __future__ import annotations

import hashlib
import json
import re
import unicodedata
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from .data import Pair, jsonl_records, chat_messages, nfc, plain_prompt
from .errors import SftscopeError
from .quality import cache_argument, output_cache, pad_id, prompt_forward, right_padded, score_continuations

MAX_NEW_TOKENS = 32
BOOTSTRAP = 1000  # resamples for the 95% intervals (seeded: the same numbers every time)
MIN_GENERAL_PROMPTS = 4


@dataclass(frozen=True)
class Item:
    """A multiple-choice question: the options and the index of the right one."""

    question: str
    choices: tuple[str, ...]
    answer: int


@dataclass(frozen=True)
class GeneralSet:
    """What drift is measured on: general prompts, general text passages, knowledge items."""

    prompts: tuple[str, ...]
    passages: tuple[str, ...]
    items: tuple[Item, ...]
    source: str = "shipped"

    def digest(self) -> str:
        raw = json.dumps([self.prompts, self.passages, [(i.question, i.choices, i.answer) for i in self.items]])
        return hashlib.sha256(raw.encode()).hexdigest()[:16]


def _shipped(name: str) -> Path:
    return Path(str(resources.files("sftscope") / "datasets" / name))


def read_general_prompts(path: str | Path) -> tuple[str, ...]:
    """One JSON object per line with a non-empty ``prompt`` (other keys ignored); every bad line is one error."""
    path = Path(path).expanduser()
    if not path.exists():
        raise SftscopeError(f"general prompts file not found: {path}")
    if not path.is_file():
        raise SftscopeError(f"{path}: not a regular file")
    prompts = []
    for where, record in jsonl_records(path):
        prompt = record.get("prompt")
        if not isinstance(prompt, str) or not prompt.strip():
            raise SftscopeError(f"{where}: 'prompt' is missing or empty (each line: {{\"prompt\": \"...\"}})")
        prompts.append(nfc(prompt.strip()))
    if len(prompts) < MIN_GENERAL_PROMPTS:
        raise SftscopeError(f"{path}: {len(prompts)} general prompt(s); drift needs at least {MIN_GENERAL_PROMPTS}")
    if len(set(prompts)) != len(prompts):
        raise SftscopeError(f"{path}: a prompt appears twice ({next(p for p in prompts if prompts.count(p) > 1)[:60]!r})")
    return tuple(prompts)


def load_general_set(prompts: str | Path | None = None, limit: int | None = None) -> GeneralSet:
    """The shipped general set; ``prompts`` replaces its prompts with the user's (analysis.general_prompts).

    ``limit`` keeps ``limit`` prompts, passages and items, evenly spread over each file (the shipped files
    are ordered by kind, so the first few would all be questions): a cheaper, noisier measurement.
    """
    shipped_prompts = tuple(r["prompt"] for _, r in jsonl_records(_shipped("general_prompts.jsonl")))
    passages = tuple(r["text"] for _, r in jsonl_records(_shipped("general_text.jsonl")))
    items = tuple(Item(r["question"], tuple(r["choices"]), int(r["answer"]))
                  for _, r in jsonl_records(_shipped("knowledge.jsonl")))
    own = shipped_prompts if prompts is None else read_general_prompts(prompts)
    return GeneralSet(spread(own, limit), spread(passages, limit), spread(items, limit),
                      source="shipped" if prompts is None else str(prompts))


def spread(rows: tuple, limit: int | None) -> tuple:
    """``limit`` rows evenly spaced over ``rows`` (all of them without a limit, or when there are fewer)."""
    if limit is None or limit >= len(rows):
        return rows
    return tuple(rows[(i * len(rows)) // limit] for i in range(limit))


# --------------------------------------------------------------------------- encoding


def prompt_ids(tokenizer, prompt: str) -> list[int]:
    """A general prompt as the model sees a user turn: its chat template with the generation prompt, or plain."""
    pair = Pair(prompt, "")
    if getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template(chat_messages(pair), add_generation_prompt=True, tokenize=False)
        return list(tokenizer(text, add_special_tokens=False)["input_ids"])
    return list(tokenizer(plain_prompt(pair))["input_ids"])


def knowledge_context(item: Item) -> str:
    """lm-evaluation-harness's ARC layout: the question, then "Answer:"; each option follows after a space."""
    return f"Question: {item.question}\nAnswer:"


def encode_item(tokenizer, item: Item) -> tuple[list[int], list[list[int]]]:
    """Context ids and each option's continuation ids, split where lm-evaluation-harness splits them."""
    context = knowledge_context(item)
    context_ids = list(tokenizer(context)["input_ids"])
    options = []
    for choice in item.choices:
        whole = list(tokenizer(context + " " + choice)["input_ids"])
        if whole[: len(context_ids)] == context_ids and len(whole) > len(context_ids):
            options.append(whole[len(context_ids):])
        else:  # the boundary merged into one token: encode the option on its own
            options.append(list(tokenizer(" " + choice, add_special_tokens=False)["input_ids"]))
    return context_ids, options


def eos_ids(model, tokenizer) -> set[int]:
    """Tokens that end a greedy answer: the tokenizer's eos and the generation config's."""
    found = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if isinstance(configured, int):
        found.add(configured)
    elif configured:
        found.update(configured)
    return found


# --------------------------------------------------------------------------- the base model's answers


def greedy_answers(model, tokenizer, prompts: Sequence[str], *, max_new_tokens: int = MAX_NEW_TOKENS,
                   batch_size: int = 128, progress: Callable | None = None) -> list[list[int]]:
    """Greedy answers (token ids, the final eos kept) of ``model`` to each prompt, at most ``max_new_tokens``."""
    import torch  # noqa: PLC0415

    device = next(model.parameters()).device
    stop = eos_ids(model, tokenizer)
    pad = pad_id(tokenizer)
    answers: list[list[int]] = []
    bar = progress(total=len(prompts), desc="base answers") if progress else None
    for start in range(0, len(prompts), batch_size):
        batch = [prompt_ids(tokenizer, p) for p in prompts[start : start + batch_size]]
        with torch.no_grad():
            out, mask = prompt_forward(model, pad, batch, following=max_new_tokens)
            cache = output_cache(out)
            rows = [[] for _ in batch]
            done = [False] * len(batch)
            token = out.logits[:, -1].float().argmax(-1)
            lengths = mask.sum(-1)
            for step in range(max_new_tokens):
                for r in range(len(batch)):
                    if not done[r]:
                        rows[r].append(int(token[r]))
                        done[r] = int(token[r]) in stop
                if all(done) or step == max_new_tokens - 1:
                    break
                mask = torch.cat([mask, torch.ones((len(batch), 1), dtype=mask.dtype)], dim=1)
                out = model(input_ids=token[:, None].to(device), attention_mask=mask.to(device),
                            position_ids=(lengths + step)[:, None].to(device), use_cache=True,
                            **{cache_argument(model): cache})
                cache = output_cache(out)
                token = out.logits[:, -1].float().argmax(-1)
        answers += rows
        if bar:
            bar.update(len(batch))
    if bar:
        bar.close()
    return answers


def cut_back(cache, length: int, extra: int) -> None:
    """Cut a cache back to its first ``length`` positions (``extra`` more were added): transformers 5.2x takes
    the number to remove, earlier versions the length to keep."""
    try:
        cache.crop(-extra)
    except ValueError:
        cache.crop(length)


# --------------------------------------------------------------------------- one model state on the data


@dataclass
class StateScores:
    """What one model state (the base, or a checkpoint) did on the general data."""

    kl: list[float] = field(default_factory=list)  # per prompt: KL summed over its answer tokens
    agrees: list[bool] = field(default_factory=list)  # per prompt: its greedy answer is the base's
    label_start: list[bool] = field(default_factory=list)  # per prompt: its greedy answer begins with a task label
    opening: list[str] = field(default_factory=list)  # per prompt: the first greedy tokens, decoded
    nll: list[float] = field(default_factory=list)  # per passage: summed negative log-likelihood
    correct: list[bool] = field(default_factory=list)  # per knowledge item (acc_norm)


def starts_with_label(text: str, labels: Sequence[str]) -> bool:
    """Whether ``text`` is, or begins with, one of the labels (case and leading punctuation ignored)."""
    opening = "\"'`*([{-:> \t\n"
    cleaned = unicodedata.normalize("NFC", text).strip().lstrip(opening).lower()
    wanted = [unicodedata.normalize("NFC", label).strip().lstrip(opening).lower() for label in labels]
    return any(w and re.match(rf"{re.escape(w)}(?!\w)", cleaned) for w in wanted)


class DriftScorer:
    """Scores model states (the base model first, then checkpoints) on a general set, one state at a time.

    ``base(model)`` scores the base model and keeps its logits along its own
    answers (in the model's dtype: about 0.7 GB for 210 answers of 32 tokens,
    a 49k vocabulary and bfloat16): every checkpoint's KL is taken against
    them, so the base model is computed once. ``state(model)`` scores a checkpoint: a plain model
    (the adapter merged in), or a PEFT model inside its own context. Each state
    runs at the speed of its own forward pass; nothing of it is kept.
    """

    def __init__(self, tokenizer, general: GeneralSet, answers: Sequence[Sequence[int]],
                 labels: Sequence[str] | None, *, batch_size: int = 64) -> None:
        if len(answers) != len(general.prompts):
            raise SftscopeError(f"{len(answers)} base answers for {len(general.prompts)} general prompts")
        self.tokenizer, self.general = tokenizer, general
        self.answers = [list(a) for a in answers]
        self.labels = list(labels) if labels else None
        self.batch_size = batch_size
        self.pad = pad_id(tokenizer)
        self.prompt_ids = [prompt_ids(tokenizer, p) for p in general.prompts]
        self.passage_ids = [list(tokenizer(p)["input_ids"]) for p in general.passages]
        self.item_ids = [encode_item(tokenizer, item) for item in general.items]
        # rows of like length share a batch (less padding); results go back to their own places
        self.prompt_batches = by_length([len(p) + len(a) for p, a in zip(self.prompt_ids, self.answers)], batch_size)
        self.passage_batches = by_length([len(p) for p in self.passage_ids], max(1, batch_size // 4))  # long rows
        # items whose options are all one token need no pass beyond their context: they go together
        self.item_batches = by_length([(max(len(o) for o in options), len(c)) for c, options in self.item_ids],
                                      batch_size)
        label_tokens = [len(tokenizer(" " + label, add_special_tokens=False)["input_ids"]) for label in labels or []]
        self.label_steps = min(MAX_NEW_TOKENS, max(label_tokens, default=0) + 1) if labels else 1
        self.base_logp: list | None = None  # per prompt: the base model's logits along its answer [length, vocab]
        self.base_argmax: list | None = None  # per prompt: the base model's most likely token at each answer position
        self.base_scores: StateScores | None = None

    def base(self, model, progress: Callable | None = None) -> StateScores:
        """Score the base model (``model`` is it: a base model, or a PEFT model with its adapter disabled)."""
        self.base_scores = self._score(model, progress, keep=True)
        return self.base_scores

    def state(self, model, progress: Callable | None = None) -> StateScores:
        """Score one checkpoint against the base model scored before."""
        if self.base_logp is None:
            raise SftscopeError("score the base model first (DriftScorer.base)")
        return self._score(model, progress, keep=False)

    def _score(self, model, progress: Callable | None, *, keep: bool) -> StateScores:
        import torch  # noqa: PLC0415

        self.model = model
        prompts, passages, items = self.general.prompts, self.general.passages, self.general.items
        kl, agrees, label_start, opening = [0.0] * len(prompts), [False] * len(prompts), [False] * len(prompts), [""] * len(prompts)
        nll, correct = [0.0] * len(passages), [False] * len(items)
        if keep:
            self.base_logp, self.base_argmax = [None] * len(prompts), [None] * len(prompts)
        bar = progress(total=len(prompts) + len(passages) + len(items), desc="drift") if progress else None
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                for rows in self.prompt_batches:
                    logits, openings = self._prompt_pass(rows)
                    for r, i in enumerate(rows):
                        mine = logits[r, : len(self.answers[i])]
                        if keep:  # the base model's logits as it computed them: against itself, KL is exactly 0
                            self.base_logp[i] = mine.clone()
                        mine, base = torch.log_softmax(mine.float(), -1), torch.log_softmax(self.base_logp[i].float(), -1)
                        kl[i] = float((base.exp() * (base - mine)).sum())  # summed over the answer's tokens
                        # the greedy answers agree when the most likely token is the base model's at every position
                        # (computed alike for both, so the base agrees with itself exactly)
                        if keep:
                            self.base_argmax[i] = base.argmax(-1)
                        agrees[i] = bool(torch.equal(mine.argmax(-1), self.base_argmax[i]))
                        opening[i] = openings[r]
                        label_start[i] = starts_with_label(openings[r], self.labels) if self.labels else False
                    if bar:
                        bar.update(len(rows))
                for rows in self.passage_batches:
                    for i, value in zip(rows, self._passage_pass(rows)):
                        nll[i] = value
                    if bar:
                        bar.update(len(rows))
                for rows in self.item_batches:
                    for i, value in zip(rows, self._item_pass(rows)):
                        correct[i] = value
                    if bar:
                        bar.update(len(rows))
        finally:
            model.train(was_training)
            self.model = None
            if bar:
                bar.close()
        return StateScores(kl, agrees, label_start, opening, nll, correct)

    # -- the three passes

    def _prompt_pass(self, rows: Sequence[int]):
        """Logits along each base answer ([rows, longest, vocab]) and the first greedy tokens, decoded."""
        import torch  # noqa: PLC0415

        model = self.model
        device = next(model.parameters()).device
        encoded = [self.prompt_ids[i] for i in rows]
        following = max(len(self.answers[i]) for i in rows) + self.label_steps
        # the prompts and the base answers (teacher-forced) in one pass
        tails = [self.answers[i][:-1] for i in rows]
        extra = max(len(t) for t in tails)
        out, mask = prompt_forward(model, self.pad, encoded, following=following, tails=tails)
        first = out.logits[:, 0].cpu()
        rest = out.logits[:, 1:].cpu() if extra else None
        cache, width, lengths = output_cache(out), mask.shape[1], mask.sum(-1)
        if self.label_steps > 1 and extra:  # back to the prompt's end, for the greedy tokens
            try:
                cut_back(cache, width, extra)
            except RuntimeError:  # a sliding-window layer cannot be cut back: compute the prompt again
                cache = output_cache(prompt_forward(model, self.pad, encoded, following=following)[0])
        # the first greedy tokens (as many as the longest label needs), from the prompt's cache
        greedy = [first.argmax(-1)]
        step_mask = mask
        for step in range(1, self.label_steps):
            step_mask = torch.cat([step_mask, torch.ones((len(rows), 1), dtype=mask.dtype)], dim=1)
            nxt = model(input_ids=greedy[-1][:, None].to(device), attention_mask=step_mask.to(device),
                        position_ids=(lengths + step - 1)[:, None].to(device), use_cache=True,
                        **{cache_argument(model): cache})
            cache = output_cache(nxt)
            greedy.append(nxt.logits[:, -1].float().argmax(-1).cpu())
        opening = [self.tokenizer.decode([int(g[r]) for g in greedy], skip_special_tokens=True) for r in range(len(rows))]
        logits = first[:, None] if rest is None else torch.cat([first[:, None], rest], dim=1)
        return logits, opening

    def _passage_pass(self, rows: Sequence[int]) -> list[float]:
        """Summed NLL of each passage: token t predicted from the tokens before it, as the training loss does."""
        import torch  # noqa: PLC0415

        device = next(self.model.parameters()).device
        encoded = [self.passage_ids[i] for i in rows]
        ids, _ = right_padded(encoded, self.pad)
        # no padding mask: under causal attention a right-padded row's own tokens never see the padding after
        # them, so their logits are those of the row alone, and attention takes its fast causal path
        logits = self.model(input_ids=ids.to(device), use_cache=False).logits
        out = []
        for r, row in enumerate(encoded):
            # each token's loss in the model's dtype (the kernel accumulates in float32; in bfloat16 this is five
            # times faster than a float32 copy of the logits, and moves the per-token mean by about 1e-4), summed
            # in float64
            targets = torch.tensor(row[1:], device=logits.device)
            losses = torch.nn.functional.cross_entropy(logits[r, : len(row) - 1], targets, reduction="none")
            out.append(float(losses.double().sum()))
        return out

    def _item_pass(self, rows: Sequence[int]) -> list[bool]:
        """acc_norm: the option with the highest log-likelihood per character of " option" is the answer."""
        items = [self.general.items[i] for i in rows]
        encoded = [self.item_ids[i] for i in rows]
        scored = score_continuations(self.model, self.pad, [c for c, _ in encoded], [o for _, o in encoded],
                                     batch_size=len(items))
        out = []
        for k, item in enumerate(items):
            per_char = scored.loglik[k] / np.array([len(" " + c) for c in item.choices])
            out.append(int(np.argmax(per_char)) == item.answer)
        return out


def by_length(lengths: Sequence, size: int) -> list[list[int]]:
    """Row indices in batches of ``size``, longest rows first (ties in index order: the same batches every time);
    a length may be a tuple, compared in order."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i], reverse=True)  # a stable sort keeps ties in order
    return [order[start : start + size] for start in range(0, len(order), size)]


def passage_tokens(tokenizer, general: GeneralSet) -> list[int]:
    """Scored positions per passage (its length less one: the first token has nothing to be predicted from)."""
    return [max(0, len(tokenizer(p)["input_ids"]) - 1) for p in general.passages]


# --------------------------------------------------------------------------- numbers


def _interval(values: np.ndarray, statistic: Callable[[np.ndarray], float], seed: int = 0) -> tuple[float, float]:
    """95% percentile bootstrap interval of ``statistic`` over the rows of ``values`` (seeded).

    A draw whose statistic is undefined (only zero-token answers, say) is left out, not counted as NaN.
    """
    rng = np.random.default_rng(seed)
    n = len(values)
    with np.errstate(invalid="ignore", divide="ignore"):
        draws = np.array([statistic(values[rng.integers(0, n, n)]) for _ in range(BOOTSTRAP)])
    draws = draws[np.isfinite(draws)]
    if not len(draws):
        return float("nan"), float("nan")
    low, high = np.percentile(draws, [2.5, 97.5])
    return float(low), float(high)


def drift_numbers(base: StateScores, state: StateScores, *, answer_tokens: Sequence[int],
                  passage_tokens: Sequence[int], labels: Sequence[str] | None) -> dict:
    """The four measures of one checkpoint against the base model, with their intervals."""
    kl = np.column_stack([state.kl, answer_tokens]).astype(float)
    pooled = lambda rows: float(rows[:, 0].sum() / rows[:, 1].sum())  # noqa: E731 - per token, over all prompts
    nll = np.column_stack([state.nll, base.nll, passage_tokens]).astype(float)
    change = lambda rows: float((rows[:, 0].sum() - rows[:, 1].sum()) / rows[:, 2].sum())  # noqa: E731
    paired = np.column_stack([state.correct, base.correct]).astype(float)
    delta = lambda rows: float(rows[:, 0].mean() - rows[:, 1].mean())  # noqa: E731
    kl_low, kl_high = _interval(kl, pooled)
    nll_low, nll_high = _interval(nll, change)
    acc_low, acc_high = _interval(paired, delta)
    both = np.array(state.correct), np.array(base.correct)
    return {
        "kl": {"mean": pooled(kl), "low": kl_low, "high": kl_high, "tokens": int(kl[:, 1].sum()),
               "prompts": len(state.kl)},
        "general_nll": {"base": float(nll[:, 1].sum() / nll[:, 2].sum()), "checkpoint": float(nll[:, 0].sum() / nll[:, 2].sum()),
                        "change": change(nll), "low": nll_low, "high": nll_high, "tokens": int(nll[:, 2].sum()),
                        "passages": len(state.nll)},
        "knowledge": {"base": float(both[1].mean()), "checkpoint": float(both[0].mean()), "change": delta(paired),
                      "low": acc_low, "high": acc_high, "lost": int(np.sum(both[1] & ~both[0])),
                      "gained": int(np.sum(~both[1] & both[0])), "items": len(state.correct)},
        "format": {"label_share": float(np.mean(state.label_start)) if labels else None,
                   "base_label_share": float(np.mean(base.label_start)) if labels else None,
                   "agreement": float(np.mean(state.agrees)), "prompts": len(state.agrees)},
    }
