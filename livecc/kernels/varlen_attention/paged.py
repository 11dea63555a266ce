"""Varlen attention of new tokens over KV caches kept in pages of a shared pool, read in place:
the prefill of several streams at once (each stream's new tokens attend, bottom-right causal, to
its cache and themselves). Inference only: a ``torch.library`` op with a fake implementation and
no backward. On CPU (and for fp32 on a GPU, as ``varlen_attention``) the pages are gathered for
SDPA per stream (``gather_pages``)."""

from __future__ import annotations

import torch

from ..dispatch import check_devices, reference
from .backends import kernel_serves
from .sdpa import varlen_attention_sdpa

__all__ = ["gather_pages", "varlen_attention_paged"]


@torch.library.custom_op("livecc::varlen_attention_paged_fwd", mutates_args=())
def _fwd(q: torch.Tensor, k_pages: torch.Tensor, v_pages: torch.Tensor, page_table: torch.Tensor,
         cu_seqlens_q: torch.Tensor, cu_seqlens_k: torch.Tensor, max_seqlen_q: int, scale: float) -> torch.Tensor:
    from .triton import varlen_attention_fwd

    return varlen_attention_fwd(q, k_pages, v_pages, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, True, scale,
                                page_table)[0]


@_fwd.register_fake
def _(q, k_pages, v_pages, page_table, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, scale):
    return torch.empty_like(q)


def varlen_attention_paged(q: torch.Tensor, k_pages: torch.Tensor, v_pages: torch.Tensor, page_table: torch.Tensor,
                           cu_seqlens_q: torch.Tensor, seqlens_k: torch.Tensor, max_seqlen_q: int,
                           softmax_scale: float | None = None) -> torch.Tensor:
    """``q [Tq, Hq, D]`` (the new tokens of B streams, packed by ``cu_seqlens_q [B + 1]``),
    ``k/v_pages [P, S, Hkv, D]``, ``page_table [B, max_pages]`` and ``seqlens_k [B]`` (each
    stream's cache length, its new tokens included) -> ``out [Tq, Hq, D]``, bottom-right causal."""
    if q.ndim != 3 or k_pages.ndim != 4 or v_pages.shape != k_pages.shape or q.shape[2] != k_pages.shape[3]:
        raise ValueError(f"expected q [T, Hq, D], k/v_pages [P, S, Hkv, D]; got {tuple(q.shape)}, "
                         f"{tuple(k_pages.shape)}")
    check_devices("varlen_attention_paged", q=q, k_pages=k_pages, v_pages=v_pages, page_table=page_table,
                  cu_seqlens_q=cu_seqlens_q, seqlens_k=seqlens_k)
    scale = q.shape[-1] ** -0.5 if softmax_scale is None else float(softmax_scale)
    cu_k = torch.nn.functional.pad(seqlens_k.to(torch.int32).cumsum(0, dtype=torch.int32), (1, 0))
    if kernel_serves(q):
        return _fwd(q, k_pages, v_pages, page_table.to(torch.int32), cu_seqlens_q.to(torch.int32), cu_k,
                    int(max_seqlen_q), scale)
    k, v, cu_k = gather_pages(k_pages, v_pages, page_table, seqlens_k)
    return varlen_attention_sdpa(q, k, v, cu_seqlens_q, cu_k, True, scale)


@reference
def gather_pages(k_pages: torch.Tensor, v_pages: torch.Tensor, page_table: torch.Tensor, lengths: torch.Tensor):
    """Each stream's first ``lengths[b]`` cached keys and values, packed: ``(k, v [sum(lengths), Hkv, D],
    cu_seqlens [B + 1])``. Slot ``j`` of stream ``b`` lives in page ``page_table[b, j // S]`` at ``j % S``."""
    page = k_pages.shape[1]
    n = lengths.tolist()
    pages = [page_table[b, : -(-m // page)].long() for b, m in enumerate(n)]
    k = torch.cat([k_pages[p].flatten(0, 1)[:m] for p, m in zip(pages, n)]) if n else k_pages[:0, 0]
    v = torch.cat([v_pages[p].flatten(0, 1)[:m] for p, m in zip(pages, n)]) if n else v_pages[:0, 0]
    cu = torch.tensor([0, *torch.tensor(n, dtype=torch.long).cumsum(0).tolist()], dtype=torch.int32)
    return k, v, cu
