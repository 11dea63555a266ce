"""The Qwen2-VL language model's forward over new tokens of several streams on one ``KVPool``.

Reuses the Hugging Face modules' weights (norms, projections, MLPs, M-RoPE tables). The streams'
new tokens run as one packed batch through every projection and MLP. Attention: a decode step (one
token per stream) reads the pages in place with the paged decode op; a prefill gathers each
stream's pages and runs the varlen op, bottom-right causal over the cache. Both ops run where the
tensors are (``livecc.kernels.dispatch``).
"""

from __future__ import annotations

import torch

from ..kernels import cu_seqlens, paged_decode_attention, varlen_attention
from .cache import KVPool, StreamKVCache, padded_page_tables

__all__ = ["forward_tokens", "paged_attention", "run_layers"]


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    a, b = x.chunk(2, dim=-1)
    return torch.cat((-b, a), dim=-1)


@torch.no_grad()
def forward_tokens(model, embeds: torch.Tensor, positions: torch.Tensor, caches: list[StreamKVCache],
                   counts: list[int]) -> torch.Tensor:
    """``embeds [n, H]`` at M-RoPE ``positions [3, n]``, the first ``counts[0]`` tokens for
    ``caches[0]`` and so on -> final hidden states ``[n, H]``.

    Writes the new keys/values into each stream's pages (the caller commits them with their kind
    and time). All caches must share one pool.
    """
    pool = caches[0].pool
    if any(c.pool is not pool for c in caches):
        raise ValueError("streams stepped together must share one KVPool")
    lm = model.model.language_model
    device = embeds.device
    for cache, n in zip(caches, counts):
        cache.reserve(n)
    lengths = [c.length + n for c, n in zip(caches, counts)]
    write = torch.cat([c.slots(torch.arange(c.length, c.length + n)) for c, n in zip(caches, counts)]).to(device)
    scale = lm.layers[0].self_attn.scaling
    if all(n == 1 for n in counts):  # decode: read the pages in place
        table = torch.tensor(padded_page_tables(caches), dtype=torch.int32, device=device)
        lens = torch.tensor(lengths, dtype=torch.int32, device=device)
        attend = paged_attention(pool, table, lens, max(lengths), scale)
    else:
        read = torch.cat([c.slots(torch.arange(end)) for c, end in zip(caches, lengths)]).to(device)
        cu_q, cu_k = cu_seqlens(counts, device), cu_seqlens(lengths, device)

        def attend(i, q):
            keys, values = (t[read] for t in pool.slot_view(i))
            return varlen_attention(q, keys, values, cu_q, cu_k, max(counts), max(lengths), causal=True,
                                    softmax_scale=scale)

    return run_layers(lm, embeds, positions.to(device), pool, write, attend)


def paged_attention(pool: KVPool, table: torch.Tensor, lengths: torch.Tensor, max_length: int, scale: float):
    """``attend(layer, q)`` for one new token per stream, reading the streams' pages in place."""

    def attend(i: int, q: torch.Tensor) -> torch.Tensor:
        return paged_decode_attention(q, pool.keys[i], pool.values[i], table, lengths, max_length, scale)

    return attend


def run_layers(lm, embeds: torch.Tensor, positions: torch.Tensor, pool: KVPool, write: torch.Tensor,
               attend) -> torch.Tensor:
    """Every decoder layer over ``embeds [n, H]`` at ``positions [3, n]``: the new keys/values go to
    pool ``write`` slots ``[n]``, then ``attend(layer, rotated q [n, Hq, D]) -> [n, Hq, D]``.
    Allocates nothing from the host and never syncs, so a CUDA graph can capture it."""
    cos, sin = lm.rotary_emb(embeds[None], positions[:, None])  # [1, n, D]
    cos, sin = cos[0, :, None], sin[0, :, None]  # [n, 1, D] broadcast over heads
    n = embeds.shape[0]
    h = embeds
    for i, layer in enumerate(lm.layers):
        attn = layer.self_attn
        x = layer.input_layernorm(h)
        q = attn.q_proj(x).view(n, -1, attn.head_dim)
        k = attn.k_proj(x).view(n, -1, attn.head_dim)
        v = attn.v_proj(x).view(n, -1, attn.head_dim)
        q, k = q * cos + _rotate_half(q) * sin, k * cos + _rotate_half(k) * sin
        keys, values = pool.slot_view(i)
        keys[write], values[write] = k, v
        h = h + attn.o_proj(attend(i, q).reshape(n, -1))
        h = h + layer.mlp(layer.post_attention_layernorm(h))
    return lm.norm(h)
