"""Paged decode attention: one new token per stream attends to its KV cache, kept in pages of a
shared pool, without gathering the pages into a contiguous buffer.

Inference only (decode runs under ``no_grad``): a ``torch.library`` custom op without a backward,
with a fake implementation so a compiled or graph-captured decode step sees through it. It runs
where its inputs are (``livecc.kernels.dispatch``); on CPU the pages are gathered for SDPA.
"""

from __future__ import annotations

import torch

from ..dispatch import check_devices, use_triton
from ..varlen_attention import varlen_attention_sdpa
from .reference import gather_pages, paged_decode_attention_reference

__all__ = ["paged_decode_attention", "paged_decode_attention_reference"]


@torch.library.custom_op("livecc::paged_decode_attention_fwd", mutates_args=())
def _fwd(q: torch.Tensor, k_pages: torch.Tensor, v_pages: torch.Tensor, page_table: torch.Tensor,
         lengths: torch.Tensor, max_length: int, scale: float, num_splits: int) -> tuple[torch.Tensor, torch.Tensor]:
    from .triton import paged_decode_attention_fwd

    return paged_decode_attention_fwd(q, k_pages, v_pages, page_table, lengths, max_length, scale, num_splits)


@_fwd.register_fake
def _(q, k_pages, v_pages, page_table, lengths, max_length, scale, num_splits):
    return torch.empty_like(q), q.new_empty(q.shape[:2], dtype=torch.float32)


def paged_decode_attention(
    q: torch.Tensor,
    k_pages: torch.Tensor,
    v_pages: torch.Tensor,
    page_table: torch.Tensor,
    lengths: torch.Tensor,
    max_length: int,
    softmax_scale: float | None = None,
    num_splits: int | None = None,
    return_lse: bool = False,
):
    """``q [B, Hq, D]``, ``k/v_pages [P, S, Hkv, D]`` (S a power of two >= 16), ``page_table [B,
    max_pages]`` and ``lengths [B]`` int32, ``max_length >= max(lengths)`` -> ``out [B, Hq, D]``
    (0 for an empty cache) and, with ``return_lse``, ``lse [B, Hq]`` (-inf there). ``num_splits``
    fixes how many page ranges run in parallel (default: by GPU)."""
    if q.ndim != 3 or k_pages.ndim != 4 or v_pages.shape != k_pages.shape or q.shape[2] != k_pages.shape[3]:
        raise ValueError(f"expected q [B, Hq, D], k/v_pages [P, S, Hkv, D]; got {tuple(q.shape)}, "
                         f"{tuple(k_pages.shape)}")
    if q.shape[1] % k_pages.shape[2]:
        raise ValueError(f"query heads ({q.shape[1]}) must be a multiple of key heads ({k_pages.shape[2]})")
    page = k_pages.shape[1]
    if page < 16 or page & (page - 1):
        raise ValueError(f"page size must be a power of two >= 16, got {page}")
    check_devices("paged_decode_attention", q=q, k_pages=k_pages, v_pages=v_pages, page_table=page_table,
                  lengths=lengths)
    scale = q.shape[-1] ** -0.5 if softmax_scale is None else float(softmax_scale)
    if use_triton(q):
        out, lse = _fwd(q, k_pages, v_pages, page_table.to(torch.int32), lengths.to(torch.int32), int(max_length),
                        scale, int(num_splits or 0))
    elif return_lse:
        out, lse = paged_decode_attention_reference(q, k_pages, v_pages, page_table, lengths, scale)
    else:
        k, v, cu_k = gather_pages(k_pages, v_pages, page_table, lengths)
        cu_q = torch.arange(q.shape[0] + 1, dtype=torch.int32)
        return varlen_attention_sdpa(q, k, v, cu_q, cu_k, causal=False, scale=scale)
    return (out, lse) if return_lse else out
