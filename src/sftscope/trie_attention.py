"""Attention of trie branches over shared key/value segments, without copying them.

At level ``l`` of the prefix trie (see ``prefix.py``) a forward pass extends
``R`` branch rows of each of ``B`` samples by one block. Each row's prefix is a
chain of segments: the background before the first player (one copy per
sample), then one segment per earlier player ``j`` that exists in ``2**j``
variants, each shared by a run of consecutive rows. A key/value cache per row
would copy every segment into every row, at every layer; here each segment's
keys meet the queries of all the rows sharing it in one batched matrix
product, and one softmax runs over the concatenated scores. Grouped key/value
heads are folded into the query length, so they are never repeated either.

Samples of different lengths share a pass: every block is left-padded to the
longest, so the last token sits at the same index in every row; padded keys
are masked out, padded queries get a real position and are never read.

The function is registered with transformers' ``AttentionInterface`` and
selected for the duration of a call with :func:`trie_attention`; whatever the
model computes around attention (norms, rotary embeddings, MLPs) is its own.
"""

from __future__ import annotations

import contextlib
import contextvars
from dataclasses import dataclass, field

import torch

from .errors import SftscopeError

NAME = "sftscope_trie"


@dataclass
class Segment:
    """One block's keys and values for every variant computed in a forward pass.

    ``keys``/``values``: ``(kv_heads, samples, variants, length, head_dim)``;
    ``first``: global index of the first variant; ``bits``: how many players
    fix a variant; ``positions``/``valid``: ``(samples, length)``.
    """

    keys: torch.Tensor
    values: torch.Tensor
    first: int
    bits: int
    positions: torch.Tensor
    valid: torch.Tensor


@dataclass
class TrieStep:
    """What one forward pass needs to know about its rows, and what it leaves behind."""

    segments: list[list[Segment]]  # per layer: the ancestors, oldest first
    samples: int
    row_first: int  # global index of this pass's first row (the same in every sample)
    rows: int  # rows per sample
    bits: int  # players fixed by a row at this level
    positions: torch.Tensor  # (samples, T) absolute positions of the block's tokens
    valid: torch.Tensor  # (samples, T) False on padding
    new: dict[int, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)
    result: object = None  # the model's output for this pass


_STEP: contextvars.ContextVar[TrieStep | None] = contextvars.ContextVar("sftscope_trie_step", default=None)


def _variants(segment: Segment, step: TrieStep) -> tuple[torch.Tensor, torch.Tensor, int]:
    """The slice of a segment this pass's rows use, and how many variants that is."""
    shift = step.bits - segment.bits
    lo = step.row_first >> shift
    hi = (step.row_first + step.rows - 1) >> shift
    count = hi - lo + 1
    start = lo - segment.first
    if start < 0 or start + count > segment.keys.shape[2]:
        raise SftscopeError("trie attention: rows outside the cached variants (engine bug)")
    return segment.keys[:, :, start : start + count], segment.values[:, :, start : start + count], count


def _allowed(step: TrieStep, key_pos: torch.Tensor, key_valid: torch.Tensor, window: int | None) -> torch.Tensor:
    """(B, T, L) boolean: causal, within the sliding window where the layer has one, real keys only."""
    offset = step.positions[:, :, None] - key_pos[:, None, :]
    allowed = (offset >= 0) & key_valid[:, None, :]
    if window is not None:
        allowed &= offset < window
    return allowed


def trie_attention_forward(
    module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask=None,
    scaling: float | None = None,
    dropout: float = 0.0,
    sliding_window: int | None = None,
    softcap: float | None = None,
    **kwargs,
):
    """``AttentionInterface`` function: ``query (B*R, H, T, D)``, ``key/value (B*R, Hkv, T, D)`` of the new block."""
    step = _STEP.get()
    if step is None:
        raise SftscopeError("trie attention called outside a prefix-engine pass")
    if kwargs.get("s_aux") is not None:
        raise SftscopeError("trie attention does not support attention sinks; use engine='naive'")
    _, heads, length, dim = query.shape
    kv_heads = key.shape[1]
    group = heads // kv_heads
    b, rows = step.samples, step.rows
    # (Hkv, B, R, g*T, D): rows sharing a segment variant are consecutive, so any variant count is a view
    q = query.reshape(b, rows, kv_heads, group, length, dim).permute(2, 0, 1, 3, 4, 5)
    q = q.reshape(kv_heads, b, rows, group * length, dim).contiguous()
    k_new = key.reshape(b, rows, kv_heads, length, dim).permute(2, 0, 1, 3, 4).contiguous()
    v_new = value.reshape(b, rows, kv_heads, length, dim).permute(2, 0, 1, 3, 4).contiguous()
    step.new[module.layer_idx] = (k_new, v_new)

    parts, sources = [], []
    for segment in step.segments[module.layer_idx]:
        keys, values, count = _variants(segment, step)
        scores = torch.matmul(q.view(kv_heads, b, count, -1, dim), keys.transpose(-1, -2))
        parts.append(scores.view(kv_heads, b, rows, group * length, -1))
        sources.append((values, count, segment.positions, segment.valid))
    parts.append(torch.matmul(q, k_new.transpose(-1, -2)))
    sources.append((v_new, rows, step.positions, step.valid))

    scores = torch.cat(parts, dim=-1).float() * (scaling if scaling is not None else dim**-0.5)
    if softcap is not None:
        scores = softcap * torch.tanh(scores / softcap)
    key_pos = torch.cat([s[2] for s in sources], dim=1)
    key_valid = torch.cat([s[3] for s in sources], dim=1)
    allowed = _allowed(step, key_pos, key_valid, sliding_window)  # (B, T, L)
    scores = scores.view(kv_heads, b, rows, group, length, -1).masked_fill(~allowed[:, None, None], float("-inf"))
    probs = torch.softmax(scores, dim=-1).to(value.dtype).view(kv_heads, b, rows, group * length, -1)

    out = None
    offset = 0
    for values, count, positions, _ in sources:
        width = positions.shape[1]
        p = probs[..., offset : offset + width].reshape(kv_heads, b, count, -1, width)
        part = torch.matmul(p, values).view(kv_heads, b, rows, group * length, dim)
        out = part if out is None else out.add_(part)
        offset += width
    out = out.view(kv_heads, b, rows, group, length, dim).permute(1, 2, 4, 0, 3, 5)
    return out.reshape(b * rows, length, heads, dim), None


def _register() -> None:
    from transformers import AttentionInterface  # noqa: PLC0415

    AttentionInterface.register(NAME, trie_attention_forward)


def _configs(config):
    yield config
    for key in getattr(config, "sub_configs", {}) or {}:
        sub = getattr(config, key, None)
        if sub is not None:
            yield from _configs(sub)


@contextlib.contextmanager
def trie_attention(model):
    """Route the model's attention through :func:`trie_attention_forward` meanwhile.

    transformers looks the implementation up on the config at call time, so it
    is switched on every (sub-)config and put back afterwards. Not for a model
    shared with other threads while it runs.
    """
    _register()
    configs = list(_configs(model.config))
    saved = [c._attn_implementation_internal for c in configs]
    for c in configs:
        c._attn_implementation_internal = NAME
    try:
        yield
    finally:
        for c, old in zip(configs, saved):
            c._attn_implementation_internal = old


@contextlib.contextmanager
def trie_step(step: TrieStep):
    token = _STEP.set(step)
    try:
        yield step
    finally:
        _STEP.reset(token)
