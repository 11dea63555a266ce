"""Paged decode attention: one new token per stream attends to its KV cache, kept in pages of a
shared pool, without gathering the pages into a contiguous buffer.

Inference only (decode runs under ``no_grad``), so there is no backward. ``paged_decode_attention``
dispatches by device like the other kernels (``livecc.kernels.dispatch``).
"""

from __future__ import annotations

import torch

from ..dispatch import use_triton
from .reference import paged_decode_attention_reference

__all__ = ["paged_decode_attention", "paged_decode_attention_reference"]


def paged_decode_attention(
    q: torch.Tensor,
    k_pages: torch.Tensor,
    v_pages: torch.Tensor,
    page_table: torch.Tensor,
    lengths: torch.Tensor,
    max_length: int,
    softmax_scale: float | None = None,
    num_splits: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``q [B, Hq, D]``, ``k/v_pages [P, S, Hkv, D]`` (S a power of two >= 16), ``page_table [B,
    max_pages]`` and ``lengths [B]`` int32, ``max_length >= max(lengths)`` -> ``(out [B, Hq, D],
    lse [B, Hq])``. ``num_splits`` fixes how many page ranges run in parallel (default: by GPU)."""
    if q.ndim != 3 or k_pages.ndim != 4 or v_pages.shape != k_pages.shape or q.shape[2] != k_pages.shape[3]:
        raise ValueError(f"expected q [B, Hq, D], k/v_pages [P, S, Hkv, D]; got {tuple(q.shape)}, "
                         f"{tuple(k_pages.shape)}")
    if q.shape[1] % k_pages.shape[2]:
        raise ValueError(f"query heads ({q.shape[1]}) must be a multiple of key heads ({k_pages.shape[2]})")
    page = k_pages.shape[1]
    if page < 16 or page & (page - 1):
        raise ValueError(f"page size must be a power of two >= 16, got {page}")
    scale = q.shape[-1] ** -0.5 if softmax_scale is None else float(softmax_scale)
    if not use_triton(q):
        return paged_decode_attention_reference(q, k_pages, v_pages, page_table, lengths, scale)
    from .triton import paged_decode_forward

    return paged_decode_forward(q, k_pages, v_pages, page_table.to(torch.int32), lengths.to(torch.int32),
                                int(max_length), scale, num_splits)
