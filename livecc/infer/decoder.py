"""The Qwen2-VL language model's forward over new tokens of several streams on one ``KVPool``.

Reuses the Hugging Face modules' weights (norms, projections, MLPs, M-RoPE tables). The streams'
new tokens run as one packed batch through every projection and MLP. Attention: a decode step (one
token per stream) reads the pages in place with the paged decode kernel; a prefill gathers each
stream's pages and runs livecc's varlen kernel, bottom-right causal over the cache. Where the
kernels do not run (CPU), torch's SDPA serves instead of the kernels' references, which are
written for checking (fp32 math, log-sum-exp) and cost about 3x more per call.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..kernels.attention import varlen_attention
from ..kernels.dispatch import use_triton
from ..kernels.paged_decode import paged_decode_attention
from .cache import StreamKVCache

__all__ = ["forward_tokens"]


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    a, b = x.chunk(2, dim=-1)
    return torch.cat((-b, a), dim=-1)


def _cumulative(counts: list[int], device) -> torch.Tensor:
    return torch.tensor([0, *torch.tensor(counts).cumsum(0).tolist()], dtype=torch.int32, device=device)


def _sdpa(q, keys, values, cu_q: list[int], cu_k: list[int], scale: float) -> torch.Tensor:
    """Per stream, bottom-right causal attention with torch's SDPA (the CPU serving path)."""
    outs = []
    for b in range(len(cu_q) - 1):
        qb, kb, vb = (t[c[b] : c[b + 1]].transpose(0, 1) for t, c in ((q, cu_q), (keys, cu_k), (values, cu_k)))
        lq, lk = qb.shape[1], kb.shape[1]
        mask = None if lq == 1 else torch.ones(lq, lk, dtype=torch.bool, device=q.device).tril(lk - lq)
        outs.append(F.scaled_dot_product_attention(qb, kb, vb, attn_mask=mask, scale=scale, enable_gqa=True))
    return torch.cat(outs, dim=1).transpose(0, 1)


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
    write = torch.cat([c.slots(c.length, c.length + n) for c, n in zip(caches, counts)])
    kernels = use_triton(embeds)
    decode = kernels and all(n == 1 for n in counts)
    if decode:
        width = max(len(c.page_table) for c in caches)
        table = torch.tensor([c.page_table + [0] * (width - len(c.page_table)) for c in caches],
                             dtype=torch.int32, device=device)
        lens = torch.tensor(lengths, dtype=torch.int32, device=device)
    else:
        read = torch.cat([c.slots(0, end) for c, end in zip(caches, lengths)])
        cu_q, cu_k = _cumulative(counts, device), _cumulative(lengths, device)
    cos, sin = lm.rotary_emb(embeds[None], positions[:, None].to(device))  # [1, n, D]
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
        if decode:
            out, _ = paged_decode_attention(q, pool.keys[i], pool.values[i], table, lens, max(lengths),
                                            softmax_scale=attn.scaling)
        elif kernels:
            out, _ = varlen_attention(q, keys[read], values[read], cu_q, cu_k, max(counts), max(lengths),
                                      causal=True, softmax_scale=attn.scaling)
        else:
            out = _sdpa(q, keys[read], values[read], cu_q.tolist(), cu_k.tolist(), attn.scaling)
        h = h + attn.o_proj(out.reshape(n, -1))
        h = h + layer.mlp(layer.post_attention_layernorm(h))
    return lm.norm(h)
