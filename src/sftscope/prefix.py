"""Prefix-shared evaluation of the ``2^n`` masked prompts.

Every masked prompt is the same token sequence with some player spans
replaced. Cut it into blocks: the background before player 0, then for each
player ``i`` its span plus the background up to player ``i + 1``. After block
``i`` only ``2^(i+1)`` distinct prefixes exist (one per pattern of players
``0..i``), so we walk this binary trie level by level: the key/value cache of a
prefix is computed once and every branch below it reuses it. The token count is
``len(block_-1) + sum_i 2^(i+1) len(block_i)`` instead of ``2^n * L``, which is
the floor for any exact prefix sharing.

Memory: the trie is walked depth-first in groups of branches small enough for
``max_memory_bytes`` (cache + activations), so large ``n`` on a large model
does not run out of memory; the chosen group size is logged at debug level.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os

import numpy as np
import torch

from .errors import SftscopeError
from .game import MaskedGame, check_finite, log_odds

log = logging.getLogger(__name__)


def supports_prefix_sharing(model) -> bool:
    """Decoder-only transformers with a key/value cache (Llama, Gemma-3, Qwen, ...)."""
    config = getattr(model, "config", None)
    if config is None or getattr(config, "is_encoder_decoder", False):
        return False
    if getattr(model, "_is_stateful", False):  # recurrent state cannot be shared by prefix
        return False
    return bool(getattr(model, "_supports_cache_class", True)) and hasattr(model, "forward")


def floor_tokens(game: MaskedGame) -> int:
    """Token positions any exact prefix-sharing scheme must compute for this game."""
    blocks = _blocks(game)
    return blocks[0][1] + sum((1 << (i + 1)) * (end - start) for i, (start, end) in enumerate(blocks[1:]))


def _blocks(game: MaskedGame) -> list[tuple[int, int]]:
    """``[(0, s_0)]`` then ``(s_i, s_{i+1})`` per player, the last one running to the end."""
    starts = [s for s, _ in game.spans]
    ends = starts[1:] + [len(game.input_ids)]
    return [(0, starts[0])] + list(zip(starts, ends))


def _text_config(model):
    """The decoder's config (multimodal models nest it)."""
    config = model.config
    return config.get_text_config() if hasattr(config, "get_text_config") else config


def _bytes_per_cached_token(model, dtype: torch.dtype) -> int:
    config = _text_config(model)
    layers = config.num_hidden_layers
    heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    return 2 * layers * heads * head_dim * torch.finfo(dtype).bits // 8


@contextlib.contextmanager
def _native_gqa(device: torch.device):
    """On CPU, let SDPA broadcast grouped KV heads instead of copying the whole cache.

    transformers only does so without a mask; our cached blocks need one. The
    switch is transformers' own environment flag, set for our calls only.
    """
    if device.type != "cpu" or "TRANSFORMERS_SDPA_FORCE_GQA" in os.environ:
        yield
        return
    os.environ["TRANSFORMERS_SDPA_FORCE_GQA"] = "1"
    try:
        yield
    finally:
        os.environ.pop("TRANSFORMERS_SDPA_FORCE_GQA", None)


class PrefixEngine:
    """Values of all masks with shared prefixes (see module docstring)."""

    def __init__(
        self,
        model,
        baseline: torch.Tensor,
        *,
        max_memory_bytes: int = 2 << 30,
    ) -> None:
        if not supports_prefix_sharing(model):
            raise SftscopeError(f"{type(model).__name__} has no key/value cache to share; use engine='naive'")
        self.model = model
        decoder = model.get_decoder() if hasattr(model, "get_decoder") else model
        self._decoder = decoder if decoder is not None else model
        self.baseline = baseline
        self.max_memory_bytes = max_memory_bytes
        self.tokens_computed = 0

    def _max_rows(self, total_len: int, block_len: int, dtype: torch.dtype) -> int:
        config = _text_config(self.model)
        width = config.hidden_size
        # this branch's cache, plus its ancestors' kept alive while we walk (a geometric series: x2)
        per_row = 2 * total_len * _bytes_per_cached_token(self.model, dtype)
        # activations of one block: a few hidden-size and MLP-size tensors per token, plus last-token logits
        inter = getattr(config, "intermediate_size", 4 * width)
        per_row += block_len * (8 * width + 3 * inter) * torch.finfo(dtype).bits // 8
        per_row += config.vocab_size * 4
        return max(2, int(self.max_memory_bytes // max(per_row, 1)))

    @torch.no_grad()
    def values(self, game: MaskedGame, masks: np.ndarray | None = None) -> np.ndarray:
        """All ``2^n`` values are computed (the trie is walked whole); ``masks`` selects from them."""
        if game.n_players == 0:
            raise SftscopeError("a game needs at least one player")
        embed = self.model.get_input_embeddings()
        device = embed.weight.device
        embeds = embed(torch.tensor([game.input_ids], device=device))[0]
        baseline = self.baseline.to(embeds.dtype)
        blocks = _blocks(game)
        self._max = self._max_rows(len(game.input_ids), max(e - s for s, e in blocks), embeds.dtype)
        log.debug("prefix engine: at most %d branches per forward pass", self._max)
        out = np.full(1 << game.n_players, np.nan)
        cache = None
        start, end = blocks[0]
        with _native_gqa(device):
            if end > start:
                result = self._decoder(inputs_embeds=embeds[None, start:end], use_cache=True)
                cache = result.past_key_values
                self.tokens_computed += end - start
            self._walk(
                game, embeds, baseline, blocks, cache, np.zeros(1, dtype=np.int64), np.zeros(1, dtype=np.int64), 0, out
            )
        values = check_finite(out)
        return values if masks is None else values[np.asarray(masks)]

    def _walk(self, game, embeds, baseline, blocks, cache, rows_of_cache, prefixes, level, out) -> None:
        """Extend every prefix by player ``level`` absent/present, then recurse.

        ``rows_of_cache`` says which batch rows of ``cache`` the ``prefixes`` are;
        nothing is copied until the forward pass gathers exactly those rows.
        """
        rows = 2 * len(prefixes)
        if rows > self._max and len(prefixes) > 1:
            half = len(prefixes) // 2
            for part in (slice(0, half), slice(half, None)):
                self._walk(game, embeds, baseline, blocks, cache, rows_of_cache[part], prefixes[part], level, out)
            return
        start, end = blocks[level + 1]
        p_start, p_end = game.spans[level]
        masks = np.repeat(prefixes, 2)
        masks[1::2] |= 1 << level
        block = embeds[start:end].unsqueeze(0).repeat(rows, 1, 1)
        block[0::2, : p_end - p_start] = baseline  # even rows: player absent
        branch = None
        if cache is not None:  # one gather per layer: the rows we need, each twice
            branch = _branch(cache, int(rows_of_cache[0]), len(rows_of_cache))
        last = level == game.n_players - 1
        # Intermediate levels only need the cache: skip the language-model head there.
        runner = self.model if last else self._decoder
        result = runner(
            inputs_embeds=block, past_key_values=branch, use_cache=True, **({"logits_to_keep": 1} if last else {})
        )
        self.tokens_computed += rows * (end - start)
        if last:
            out[masks] = log_odds(result.logits[:, -1], game.target_id).double().cpu().numpy()
            return
        self._walk(game, embeds, baseline, blocks, result.past_key_values, np.arange(rows), masks, level + 1, out)


def _branch(cache, first: int, count: int):
    """A cache holding rows ``first .. first + count`` of ``cache``, each twice (absent, present).

    One gather per layer; ``cache`` itself is untouched, so sibling groups can branch from it too.
    """
    branch = copy.copy(cache)
    branch.layers = [copy.copy(layer) for layer in cache.layers]
    for layer in branch.layers:  # re-bind, never write in place
        if getattr(layer, "keys", None) is not None and layer.keys.numel():
            rows = torch.arange(first, first + count, device=layer.keys.device).repeat_interleave(2)
            layer.keys = layer.keys.index_select(0, rows)
            layer.values = layer.values.index_select(0, rows)
    return branch
