"""The Qwen2-VL language model's forward over new tokens on top of a ``StreamKVCache``.

Reuses the Hugging Face modules' weights (norms, projections, MLPs, M-RoPE tables) and runs
attention with livecc's varlen kernel, bottom-right causal over the live cache.
"""

from __future__ import annotations

import torch

from ..kernels.attention import varlen_attention
from .cache import StreamKVCache

__all__ = ["forward_tokens"]


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    a, b = x.chunk(2, dim=-1)
    return torch.cat((-b, a), dim=-1)


@torch.no_grad()
def forward_tokens(model, embeds: torch.Tensor, positions: torch.Tensor, cache: StreamKVCache) -> torch.Tensor:
    """``embeds [n, H]`` at M-RoPE ``positions [3, n]`` -> final hidden states ``[n, H]``.

    Writes the new keys/values into ``cache`` (the caller commits them with their kind and time).
    """
    lm = model.model.language_model
    n = embeds.shape[0]
    cos, sin = lm.rotary_emb(embeds[None], positions[:, None].to(embeds.device))  # [1, n, D]
    cos, sin = cos[0, :, None], sin[0, :, None]  # [n, 1, D] broadcast over heads
    cache.reserve(n)
    cu_q = torch.tensor([0, n], dtype=torch.int32, device=embeds.device)
    cu_k = torch.tensor([0, cache.length + n], dtype=torch.int32, device=embeds.device)
    h = embeds
    for i, layer in enumerate(lm.layers):
        attn = layer.self_attn
        x = layer.input_layernorm(h)
        q = attn.q_proj(x).view(n, -1, attn.head_dim)
        k = attn.k_proj(x).view(n, -1, attn.head_dim)
        v = attn.v_proj(x).view(n, -1, attn.head_dim)
        q, k = q * cos + _rotate_half(q) * sin, k * cos + _rotate_half(k) * sin
        keys, values = cache.write(i, k, v)
        out, _ = varlen_attention(q, keys, values, cu_q, cu_k, n, keys.shape[0], causal=True,
                                  softmax_scale=attn.scaling)
        h = h + attn.o_proj(out.reshape(n, -1))
        h = h + layer.mlp(layer.post_attention_layernorm(h))
    return lm.norm(h)
