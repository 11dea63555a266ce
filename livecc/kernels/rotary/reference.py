"""Rotary position embedding of queries and keys in torch: the oracle and CPU path for ``rotary_qk``."""

from __future__ import annotations

import torch

from ..dispatch import reference

__all__ = ["rotary_qk_reference"]


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


@reference
def rotary_qk_reference(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                        unsqueeze_dim: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """``x * cos + rotate_half(x) * sin`` for ``q [B, Hq, L, D]`` and ``k [B, Hk, L, D]`` with
    ``cos``/``sin`` ``[B, L, D]`` (Hugging Face's ``apply_rotary_pos_emb``; for Qwen2-VL the M-RoPE
    sections are already folded into ``cos``/``sin`` by its rotary embedding). ``unsqueeze_dim``
    is where ``cos``/``sin`` broadcast over heads, as in Hugging Face's."""
    cos, sin = cos.unsqueeze(unsqueeze_dim), sin.unsqueeze(unsqueeze_dim)
    return q * cos + _rotate_half(q) * sin, k * cos + _rotate_half(k) * sin
