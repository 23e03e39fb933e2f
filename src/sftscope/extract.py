"""From a model and a prompt to its interactions: players, game, decomposition."""

from __future__ import annotations

import logging
from typing import Literal

import numpy as np
import torch

from .decompose import and_or_interactions
from .errors import SftscopeError
from .game import BaselineKind, GameEngine, MaskedGame, NaiveEngine, baseline_vector
from .interactions import InteractionResult
from .players import Players, Selection, choose_players, target_token, tokenize_prompt

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
    """The prefix-shared engine where the model supports a KV cache, else the naive one."""
    from .prefix import PrefixEngine, supports_prefix_sharing  # noqa: PLC0415

    if engine == "prefix" or (engine == "auto" and supports_prefix_sharing(model)):
        return PrefixEngine(model, baseline, max_memory_bytes=max_memory_bytes)
    if engine == "auto":
        log.warning("model %s has no usable KV cache: using the naive engine", type(model).__name__)
    return NaiveEngine(model, baseline, max_batch_tokens=max_batch_tokens)


def _choose(model, rendered, target: int, base_vec: torch.Tensor, n_players: int, **options) -> Players:
    def ablation_scores(words) -> np.ndarray:
        # v(N) and v(N without i) for every candidate word: one batch.
        spans = tuple(w.token_span for w in words)
        game = MaskedGame(tuple(rendered.input_ids), spans, target)
        full = (1 << len(spans)) - 1
        masks = np.array([full] + [full ^ (1 << i) for i in range(len(spans))])
        values = NaiveEngine(model, base_vec).values(game, masks)
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
) -> Players:
    """Choose the players of a prompt (on the pre-SFT model, then frozen)."""
    rendered = tokenize_prompt(tokenizer, prompt, use_chat_template=use_chat_template)
    return _choose(
        model, rendered, target_token(tokenizer, response), baseline_vector(model, tokenizer, baseline),
        n_players, selection=selection, seed=seed, allow_fewer=allow_fewer,
    )


def extract_interactions(
    model,
    tokenizer,
    prompt: str,
    response: str,
    *,
    n_players: int = 10,
    players: Players | None = None,
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
    context: str = "",
) -> InteractionResult:
    """Exact AND-OR interactions of ``model`` on one prompt.

    Pass ``players`` to reuse words chosen earlier (same sample, other
    checkpoint or model); otherwise they are chosen here.
    """
    rendered = tokenize_prompt(tokenizer, prompt, use_chat_template=use_chat_template)
    target = target_token(tokenizer, response)
    base_vec = baseline_vector(model, tokenizer, baseline)
    if players is None:
        players = _choose(
            model, rendered, target, base_vec, n_players, selection=selection, seed=seed, allow_fewer=allow_fewer
        )
    spans = _spans_in(rendered, players)
    game = MaskedGame(tuple(rendered.input_ids), spans, target)
    runner = make_engine(model, base_vec, engine, max_batch_tokens=max_batch_tokens, max_memory_bytes=max_memory_bytes)
    try:
        values = runner.values(game)  # engines reject NaN/inf; we add where it happened
    except SftscopeError as exc:
        raise SftscopeError(f"{exc} ({context})" if context and context not in str(exc) else str(exc)) from exc
    except torch.OutOfMemoryError as exc:
        where = f" ({context})" if context else ""
        raise SftscopeError(
            f"out of memory on {next(model.parameters()).device} evaluating 2^{len(spans)} masks{where}: lower "
            "max_memory_bytes (prefix engine) or max_batch_tokens (naive engine), or use fewer players"
        ) from exc
    decomposition = and_or_interactions(values, noise_bound=noise_bound)
    settings = {
        "n_players": len(players),
        "selection": selection,
        "seed": seed,
        "baseline": baseline,
        "noise_bound": noise_bound,
        "tau": tau,
        "engine": type(runner).__name__,
        "model": getattr(model.config, "_name_or_path", ""),
    }
    return InteractionResult(
        prompt, response, players, target, tokenizer.decode([target]), decomposition, settings
    )


def _spans_in(rendered, players: Players) -> tuple[tuple[int, int], ...]:
    """Token spans of frozen players in this tokenizer's rendering of the same prompt."""
    offset = rendered.content_span[0]
    by_span = {w.char_span: w for w in rendered.words}
    spans = []
    for text, (c0, c1) in zip(players.words, players.char_spans):
        word = by_span.get((c0 + offset, c1 + offset))
        if word is None or word.text != text:
            raise SftscopeError(f"player word {text!r} at {c0}:{c1} is not a word of this prompt")
        spans.append(word.token_span)
    return tuple(spans)
