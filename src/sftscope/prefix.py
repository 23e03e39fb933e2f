"""Prefix-shared evaluation of the ``2^n`` masked prompts.

Every masked prompt is the same token sequence with some player spans
replaced. Cut it into blocks: the background before player 0, then for each
player ``i`` its span plus the background up to player ``i + 1``. After block
``i`` only ``2^(i+1)`` distinct prefixes exist (one per pattern of players
``0..i``), so we walk this binary trie level by level: each distinct block is
computed once, and every branch below it attends to its keys and values in
place (``trie_attention.py``), never through a per-branch copy. The token count
is ``len(block_-1) + sum_i 2^(i+1) len(block_i)`` instead of ``2^n * L``, which
is the floor for any exact prefix sharing.

Several samples with the same ``n`` walk their tries together, one forward
pass per level for all of them (``values_batch``).

Memory: the trie is walked depth-first in groups of branches small enough for
``max_memory_bytes`` (ancestors' keys/values, activations, attention scores),
so large ``n`` on a large model does not run out of memory; the chosen group
size is logged at debug level.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import torch

from .errors import SftscopeError
from .game import MaskedGame, check_finite, log_odds
from .trie_attention import Segment, TrieStep, trie_attention, trie_step

log = logging.getLogger(__name__)


def supports_prefix_sharing(model) -> bool:
    """Decoder-only transformers whose attention goes through transformers' interface (Llama, Gemma-3, Qwen, ...)."""
    config = getattr(model, "config", None)
    if config is None or getattr(config, "is_encoder_decoder", False):
        return False
    if getattr(model, "_is_stateful", False):  # recurrent state cannot be shared by prefix
        return False
    # the trie attention plugs into transformers' attention interface
    return bool(getattr(model, "_supports_attention_backend", False)) and hasattr(model, "forward")


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
            raise SftscopeError(
                f"{type(model).__name__} does not use transformers' attention interface, which the prefix engine "
                "plugs into; use engine='naive'"
            )
        self.model = model
        decoder = model.get_decoder() if hasattr(model, "get_decoder") else model
        self._decoder = decoder if decoder is not None else model
        self.baseline = baseline
        self.max_memory_bytes = max_memory_bytes
        self.tokens_computed = 0
        self._layers = _text_config(model).num_hidden_layers

    def _max_rows(self, total_len: int, block_len: int, dtype: torch.dtype) -> int:
        config = _text_config(self.model)
        width = config.hidden_size
        # keys/values of this block and of the ancestors kept alive while we walk (bounded by x2 the prompt)
        per_row = 2 * total_len * _bytes_per_cached_token(self.model, dtype)
        # attention scores and probabilities, float32, over the whole prefix
        per_row += 3 * config.num_attention_heads * block_len * total_len * 4
        # activations of one block: a few hidden-size and MLP-size tensors per token, plus last-token logits
        inter = getattr(config, "intermediate_size", 4 * width)
        per_row += block_len * (8 * width + 3 * inter) * torch.finfo(dtype).bits // 8
        per_row += config.vocab_size * 4
        return max(2, int(self.max_memory_bytes // max(per_row, 1)))

    def values(self, game: MaskedGame, masks: np.ndarray | None = None) -> np.ndarray:
        """All ``2^n`` values are computed (the trie is walked whole); ``masks`` selects from them."""
        values = self.values_batch([game])[0]
        return values if masks is None else values[np.asarray(masks)]

    @torch.no_grad()
    def values_batch(self, games: Sequence[MaskedGame], names: Sequence[str] | None = None) -> list[np.ndarray]:
        """All ``2^n`` values of several samples with the same ``n``, their tries walked together.

        Every forward pass then carries the branches of all samples at once,
        which keeps an accelerator busy on the small upper levels of the trie.
        ``names`` label the games in errors.
        """
        games = list(games)
        if not games:
            return []
        n = games[0].n_players
        if n == 0:
            raise SftscopeError("a game needs at least one player")
        if any(g.n_players != n for g in games):
            raise SftscopeError(
                f"games batched together need the same number of players; got {sorted({g.n_players for g in games})}"
            )
        embed = self.model.get_input_embeddings()
        device = embed.weight.device
        embeds = [embed(torch.tensor([g.input_ids], device=device))[0] for g in games]
        baseline = self.baseline.to(embeds[0].dtype)
        blocks = [_blocks(g) for g in games]
        longest = max(len(g.input_ids) for g in games)
        widest = max(e - s for bl in blocks for s, e in bl)
        self._max = self._max_rows(longest, widest, embeds[0].dtype)
        log.debug("prefix engine: at most %d branches per forward pass", self._max)
        out = np.full((len(games), 1 << n), np.nan)
        with trie_attention(self.model):
            segments = self._background(embeds, blocks)
            self._walk(games, embeds, baseline, blocks, segments, 0, np.zeros(1, dtype=np.int64), 0, out)
        names = names or [f"game {i}" for i in range(len(games))]
        return [check_finite(row, name) for row, name in zip(out, names)]

    def _forward(self, runner, block, positions, valid, segments, row_first, rows, bits, **kwargs) -> TrieStep:
        """One pass over ``block`` (samples x rows, T, hidden), ancestors read from ``segments``."""
        step = TrieStep(segments, positions.shape[0], row_first, rows, bits, positions, valid)
        with trie_step(step):
            step.result = runner(
                inputs_embeds=block, position_ids=positions.repeat_interleave(rows, dim=0), use_cache=False, **kwargs
            )
        if len(step.new) != self._layers:
            raise SftscopeError(
                f"{type(self.model).__name__}: {len(step.new)} of {self._layers} layers used transformers' "
                "attention interface; the prefix engine needs all of them (use engine='naive')"
            )
        self.tokens_computed += int(valid.sum()) * rows
        return step

    def _background(self, embeds, blocks) -> list[list[Segment]]:
        """The tokens before each sample's first player: one row per sample, stacked as segment 0."""
        device = embeds[0].device
        lengths = [bl[0][1] for bl in blocks]
        if max(lengths) == 0:
            return [[] for _ in range(self._layers)]
        width = max(lengths)
        positions = torch.arange(width, device=device).repeat(len(blocks), 1)
        valid = positions < torch.tensor(lengths, device=device)[:, None]
        per_sample = []
        for b, (emb, length) in enumerate(zip(embeds, lengths)):
            if length == 0:
                per_sample.append(None)
                continue
            step = self._forward(
                self._decoder, emb[None, :length], positions[b : b + 1, :length], valid[b : b + 1, :length],
                [[] for _ in range(self._layers)], 0, 1, 0,
            )
            per_sample.append(step.new)
        def padded(new, layer: int, which: int, length: int) -> torch.Tensor:
            if new is None:  # no background: all keys invalid
                like = next(p for p in per_sample if p is not None)[layer][which]
                return like.new_zeros(*like.shape[:3], width, like.shape[-1])
            return torch.nn.functional.pad(new[layer][which], (0, 0, 0, width - length))  # padded keys are invalid

        return [
            [Segment(
                torch.cat([padded(new, layer, 0, n) for new, n in zip(per_sample, lengths)], 1),
                torch.cat([padded(new, layer, 1, n) for new, n in zip(per_sample, lengths)], 1),
                0, 0, positions, valid,
            )]
            for layer in range(self._layers)
        ]

    def _extended(self, segments, step: TrieStep, bits: int) -> list[list[Segment]]:
        """Each layer's ancestors plus this pass's block, as the next level sees them."""
        return [
            layer + [Segment(*step.new[i], first=step.row_first, bits=bits, positions=step.positions, valid=step.valid)]
            for i, layer in enumerate(segments)
        ]

    def _block(self, games, embeds, baseline, blocks, level: int, rows: int):
        """Player ``level``'s block for every sample, absent on even rows, left-padded to one width."""
        spans = [bl[level + 1] for bl in blocks]
        width = max(end - start for start, end in spans)
        hidden = embeds[0].shape[-1]
        device = embeds[0].device
        block = embeds[0].new_zeros(len(games), rows, width, hidden)
        positions = torch.empty(len(games), width, dtype=torch.long, device=device)
        valid = torch.zeros(len(games), width, dtype=torch.bool, device=device)
        for b, ((start, end), game) in enumerate(zip(spans, games)):
            pad = width - (end - start)
            block[b, :, pad:] = embeds[b][start:end]
            p_start, p_end = game.spans[level]
            block[b, 0::2, pad : pad + p_end - p_start] = baseline  # even rows: player absent
            positions[b, :pad] = start  # padding gets a real position; nothing ever reads it
            positions[b, pad:] = torch.arange(start, end, device=device)
            valid[b, pad:] = True
        return block.view(len(games) * rows, width, hidden), positions, valid

    def _walk(self, games, embeds, baseline, blocks, segments, first, prefixes, level, out) -> None:
        """Extend prefixes ``first ..`` (masks ``prefixes``) by player ``level`` absent/present, then recurse.

        Row ``2 * (first + k) + b`` is prefix ``k`` with player ``level`` absent
        (``b = 0``) or present; its ancestor in the block of player ``j`` is
        row ``>> (level - j)`` there, which the trie attention reads in place.
        """
        rows = 2 * len(prefixes)
        if len(games) * rows > self._max and len(prefixes) > 1:
            half = len(prefixes) // 2
            self._walk(games, embeds, baseline, blocks, segments, first, prefixes[:half], level, out)
            self._walk(games, embeds, baseline, blocks, segments, first + half, prefixes[half:], level, out)
            return
        masks = np.repeat(prefixes, 2)
        masks[1::2] |= 1 << level
        block, positions, valid = self._block(games, embeds, baseline, blocks, level, rows)
        last = level == games[0].n_players - 1
        # Intermediate levels only need keys and values: skip the language-model head there.
        runner = self.model if last else self._decoder
        options = {"logits_to_keep": 1} if last else {}  # left padding: the last token is last in every row
        step = self._forward(runner, block, positions, valid, segments, 2 * first, rows, level + 1, **options)
        if last:
            logits = step.result.logits[:, -1].view(len(games), rows, -1)
            for b, game in enumerate(games):
                out[b, masks] = log_odds(logits[b], game.target_id).double().cpu().numpy()
            return
        children = self._extended(segments, step, bits=level + 1)
        del step
        self._walk(games, embeds, baseline, blocks, children, 2 * first, masks, level + 1, out)
