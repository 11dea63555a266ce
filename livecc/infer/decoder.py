"""The Qwen-VL language model's forward over new tokens of several streams on one ``KVPool``.

Reuses the Hugging Face modules' weights (norms, projections, MLPs, M-RoPE tables; Qwen3-VL's
per-head QK-norms and interleaved M-RoPE, and its DeepStack features added after the first
layers). The streams' new tokens run as one packed batch through every projection and MLP. Attention reads the pages in
place: a decode step (one token per stream) with the paged decode op, a prefill with the paged
varlen op (bottom-right causal over each stream's cache). The rotary embedding of q and k is one
fused op. All run where the tensors are (``livecc.kernels.dispatch``).
"""

from __future__ import annotations

import torch

from ..kernels import cu_seqlens, paged_decode_attention, rotary_qk, varlen_attention_paged
from .cache import KVPool, StreamKVCache, padded_page_tables

__all__ = ["forward_tokens", "paged_attention", "run_layers"]


@torch.no_grad()
def forward_tokens(model, embeds: torch.Tensor, positions: torch.Tensor, caches: list[StreamKVCache],
                   counts: list[int], deep: torch.Tensor | None = None) -> torch.Tensor:
    """``embeds [n, H]`` at M-RoPE ``positions [3, n]``, the first ``counts[0]`` tokens for
    ``caches[0]`` and so on -> final hidden states ``[n, H]``. ``deep [k, n, H]`` (Qwen3-VL) is
    added after layer ``i < k`` (zero on the rows that are not visual).

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
    table = torch.tensor(padded_page_tables(caches), dtype=torch.int32, device=device)
    lens = torch.tensor(lengths, dtype=torch.int32, device=device)
    if all(n == 1 for n in counts):  # decode
        attend = paged_attention(pool, table, lens, max(lengths), scale)
    else:
        cu_q = cu_seqlens(counts, device)

        def attend(i, q):
            return varlen_attention_paged(q, pool.keys[i], pool.values[i], table, cu_q, lens, max(counts), scale)

    return run_layers(lm, embeds, positions.to(device), pool, write, attend, deep)


def paged_attention(pool: KVPool, table: torch.Tensor, lengths: torch.Tensor, max_length: int, scale: float):
    """``attend(layer, q)`` for one new token per stream, reading the streams' pages in place."""

    def attend(i: int, q: torch.Tensor) -> torch.Tensor:
        return paged_decode_attention(q, pool.keys[i], pool.values[i], table, lengths, max_length, scale)

    return attend


def run_layers(lm, embeds: torch.Tensor, positions: torch.Tensor, pool: KVPool, write: torch.Tensor,
               attend, deep: torch.Tensor | None = None) -> torch.Tensor:
    """Every decoder layer over ``embeds [n, H]`` at ``positions [3, n]``: the new keys/values go to
    pool ``write`` slots ``[n]``, then ``attend(layer, rotated q [n, Hq, D]) -> [n, Hq, D]``; after
    layer ``i``, ``deep[i]`` is added when given (DeepStack, dense: adding its zero rows changes
    nothing). Allocates nothing from the host and never syncs, so a CUDA graph can capture it."""
    cos, sin = lm.rotary_emb(embeds[None], positions[:, None])  # [1, n, D]
    n = embeds.shape[0]
    h = embeds
    for i, layer in enumerate(lm.layers):
        attn = layer.self_attn
        x = layer.input_layernorm(h)
        q = attn.q_proj(x).view(1, n, -1, attn.head_dim)
        k = attn.k_proj(x).view(1, n, -1, attn.head_dim)
        if hasattr(attn, "q_norm"):  # Qwen3: each head RMS-normed before the rotation
            q, k = attn.q_norm(q), attn.k_norm(k)
        v = attn.v_proj(x).view(n, -1, attn.head_dim)
        q, k = (t.transpose(1, 2)[0] for t in rotary_qk(q.transpose(1, 2), k.transpose(1, 2), cos, sin))  # [n, H, D]
        keys, values = pool.slot_view(i)
        keys[write], values[write] = k, v
        h = h + attn.o_proj(attend(i, q).reshape(n, -1))
        h = h + layer.mlp(layer.post_attention_layernorm(h)[None])[0]  # [1, n, H]: an MoE block routes 3D input
        if deep is not None and i < deep.shape[0]:
            h = h + deep[i]
    return lm.norm(h)
