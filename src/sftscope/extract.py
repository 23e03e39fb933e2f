"""From a model and a prompt to its interactions: players, game, decomposition."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Literal

import numpy as np
import torch

from .data import nfc
from .decompose import and_or_interactions
from .errors import SftscopeError
from .game import BaselineKind, GameEngine, MaskedGame, NaiveEngine, baseline_vector
from .interactions import InteractionResult
from .phrases import choose_phrases
from .players import PlayerKind, Players, Selection, choose_players, target_token, tokenize_prompt
from .wholeprompt import DEFAULT_MASKS, whole_prompt

log = logging.getLogger(__name__)

EngineName = Literal["auto", "naive", "prefix"]


def make_engine(
    model,
    baseline: torch.Tensor,
    engine: EngineName = "auto",
    *,
    max_batch_tokens: int = 16_384,
    max_memory_bytes: int = 2 << 30,
) -> GameEngine:
    """The prefix-shared engine where the model supports it, else the naive one."""
    from .prefix import PrefixEngine, supports_prefix_sharing  # noqa: PLC0415

    if engine == "prefix" or (engine == "auto" and supports_prefix_sharing(model)):
        return PrefixEngine(model, baseline, max_memory_bytes=max_memory_bytes)
    if engine == "auto":
        log.warning("model %s does not use transformers' attention interface: naive engine", type(model).__name__)
    return NaiveEngine(model, baseline, max_batch_tokens=max_batch_tokens)


def ablation_masks(n: int) -> np.ndarray:
    """The full mask, then the full mask without each player in turn.

    Over 62 players these do not fit int64 (numpy would make them float64 or
    objects by value): they are then always Python ints in an object array.
    """
    full = (1 << n) - 1
    return np.array([full] + [full ^ (1 << i) for i in range(n)], dtype=np.int64 if n <= 62 else object)


def _choose(model, rendered, target: int, base_vec: torch.Tensor, n_players: int, progress=None,
            kind: PlayerKind = "words", **options) -> Players:
    if kind == "phrases":  # spans that cover the content: nothing to score, no selection
        return choose_phrases(rendered, n_players, allow_fewer=options.get("allow_fewer", False))
    if kind != "words":
        raise SftscopeError(f"unknown player kind {kind!r}: use words or phrases")

    def ablation_scores(words) -> np.ndarray:
        # v(N) and v(N without i) for every candidate word, batched by the naive engine
        spans = tuple(w.token_span for w in words)
        game = MaskedGame(tuple(rendered.input_ids), spans, target)
        masks = ablation_masks(len(spans))
        values = NaiveEngine(model, base_vec, progress=progress).values(game, masks)
        return np.abs(values[0] - values[1:])

    return choose_players(rendered, n_players, ablation_scores=ablation_scores, **options)


def select_players(
    model,
    tokenizer,
    prompt: str,
    response: str,
    n_players: int = 10,
    *,
    selection: Selection = "ablation",
    seed: int = 0,
    allow_fewer: bool = False,
    baseline: BaselineKind = "mean",
    use_chat_template: bool | None = None,
    kind: PlayerKind = "words",
) -> Players:
    """Choose the players of a prompt (on the pre-SFT model, then frozen); the prompt is read in Unicode NFC.

    ``kind="phrases"``: ``n_players`` contiguous phrases covering every word (``phrases.py``) instead of the
    most salient words.
    """
    rendered = tokenize_prompt(tokenizer, nfc(prompt), use_chat_template=use_chat_template)
    return _choose(
        model, rendered, target_token(tokenizer, response), baseline_vector(model, tokenizer, baseline),
        n_players, selection=selection, seed=seed, allow_fewer=allow_fewer, kind=kind,
    )


@dataclass(frozen=True)
class Request:
    """One prompt to extract: its reference response, frozen players if any, and a label for errors."""

    prompt: str
    response: str
    players: Players | None = None
    context: str = ""


def extract_interactions(
    model,
    tokenizer,
    prompt: str,
    response: str,
    *,
    players: Players | None = None,
    context: str = "",
    **options,
) -> InteractionResult:
    """Exact AND-OR interactions of ``model`` on one prompt.

    Pass ``players`` to reuse words chosen earlier (same sample, other
    checkpoint or model); otherwise they are chosen here. ``options`` are
    those of :func:`extract_many`.
    """
    return extract_many(model, tokenizer, [Request(prompt, response, players, context)], **options)[0]


def extract_many(
    model,
    tokenizer,
    requests: Sequence[Request],
    *,
    n_players: int = 10,
    selection: Selection = "ablation",
    seed: int = 0,
    allow_fewer: bool = False,
    baseline: BaselineKind = "mean",
    noise_bound: float = 0.02,
    tau: float = 0.05,
    engine: EngineName = "auto",
    use_chat_template: bool | None = None,
    max_batch_tokens: int = 16_384,
    max_memory_bytes: int = 2 << 30,
    batch_samples: int | None = None,
    progress=None,
    players_kind: PlayerKind = "words",
    whole_prompt_masks: int = DEFAULT_MASKS,
) -> list[InteractionResult]:
    """Interactions of several prompts; up to ``batch_samples`` with as many players share each forward pass.

    Every result also carries its whole-prompt checks (``wholeprompt.py``):
    coverage (one more masked prompt) and R² on ``whole_prompt_masks`` random
    masks over all content words (0: R² not computed; free for phrase players).

    ``batch_samples=None``: 4 on an accelerator, 1 on CPU (where a saturated
    CPU gains nothing and padding costs 10-20%, see BENCHMARKS.md). The
    games' values then go to the AND-OR solver as one batch. Results come back
    in the order of ``requests``.
    """
    if batch_samples is None:
        batch_samples = 1 if next(model.parameters()).device.type == "cpu" else 4
    if batch_samples < 1:
        raise SftscopeError(f"batch_samples must be >= 1, got {batch_samples}")
    base_vec = baseline_vector(model, tokenizer, baseline)
    if whole_prompt_masks < 0:
        raise SftscopeError(f"whole_prompt_masks must be >= 0, got {whole_prompt_masks}")
    games, chosen, renderings = [], [], []
    requests = [replace(r, prompt=nfc(r.prompt), response=nfc(r.response)) for r in requests]  # "é" is one letter
    for request in requests:
        rendered = tokenize_prompt(tokenizer, request.prompt, use_chat_template=use_chat_template)
        check_context(model, len(rendered.input_ids), request.context)
        target = target_token(tokenizer, request.response)
        players = request.players
        if players is None:
            players = _choose(model, rendered, target, base_vec, n_players, progress=progress, selection=selection,
                              seed=seed, allow_fewer=allow_fewer, kind=players_kind)
        games.append(MaskedGame(tuple(rendered.input_ids), _spans_in(rendered, players), target))
        chosen.append(players)
        renderings.append(rendered)
    runner = make_engine(model, base_vec, engine, max_batch_tokens=max_batch_tokens, max_memory_bytes=max_memory_bytes)
    values: list[np.ndarray | None] = [None] * len(games)
    by_size: dict[int, list[int]] = {}
    for i, game in enumerate(games):
        by_size.setdefault(game.n_players, []).append(i)
    for indices in by_size.values():
        for k in range(0, len(indices), batch_samples):
            batch = indices[k : k + batch_samples]
            names = [requests[i].context or f"request {i}" for i in batch]
            for i, row in zip(batch, _evaluate(runner, [games[i] for i in batch], names, model)):
                values[i] = row
    decompositions = and_or_interactions(np.stack(values), noise_bound=noise_bound)
    checks = [
        whole_prompt(model, base_vec, game.input_ids, rendered.words, game.spans, game.target_id, d.values,
                     d.fitted(), masks=whole_prompt_masks, seed=seed, max_batch_tokens=max_batch_tokens)
        for game, rendered, d in zip(games, renderings, decompositions)
    ]
    settings = {
        "players": players_kind,
        "selection": selection if players_kind == "words" else "phrases",
        "seed": seed,
        "baseline": baseline,
        "noise_bound": noise_bound,
        "tau": tau,
        "engine": type(runner).__name__,
        "model": getattr(model.config, "_name_or_path", ""),
    }
    return [
        InteractionResult(
            request.prompt, request.response, players, game.target_id, tokenizer.decode([game.target_id]),
            decomposition, {"n_players": len(players), **settings, "whole_prompt_masks": whole_prompt_masks}, check,
        )
        for request, players, game, decomposition, check in zip(requests, chosen, games, decompositions, checks)
    ]


def context_length(model) -> int | None:
    """The longest input the model was built for (``max_position_embeddings``), if it says."""
    config = getattr(model, "config", None)
    config = getattr(config, "text_config", None) or config
    return getattr(config, "max_position_embeddings", None)


def check_context(model, tokens: int, where: str = "") -> None:
    limit = context_length(model)
    if limit is not None and tokens > limit:
        place = f" ({where})" if where else ""
        raise SftscopeError(f"the prompt is {tokens:,} tokens with its template, longer than the model's context of "
                            f"{limit:,}{place}: shorten it")


def _evaluate(runner: GameEngine, games: list[MaskedGame], names: list[str], model) -> list[np.ndarray]:
    """All values of a batch of games, with one-line errors naming the sample."""
    try:
        return runner.values_batch(games, names=names)
    except torch.OutOfMemoryError as exc:
        raise SftscopeError(
            f"out of memory on {next(model.parameters()).device} evaluating 2^{games[0].n_players} masks "
            f"({', '.join(names)}): lower max_memory_bytes (prefix engine) or max_batch_tokens (naive engine), "
            "batch fewer samples, or use fewer players"
        ) from exc


def _spans_in(rendered, players: Players) -> tuple[tuple[int, int], ...]:
    """Token spans of frozen players (words or phrases) in this tokenizer's rendering of the same prompt: from
    the first token of the player's first word to the last token of its last word."""
    offset = rendered.content_span[0]
    starts = {w.char_span[0]: w for w in rendered.words}
    ends = {w.char_span[1]: w for w in rendered.words}
    spans = []
    for text, (c0, c1) in zip(players.words, players.char_spans):
        first, last = starts.get(c0 + offset), ends.get(c1 + offset)
        if first is None or last is None or rendered.text[c0 + offset : c1 + offset] != text:
            raise SftscopeError(f"player {text!r} at {c0}:{c1} is not a word or phrase of this prompt")
        spans.append((first.token_span[0], last.token_span[1]))
    return tuple(spans)
