"""Pure-torch paged decode attention: gather each stream's pages, then the varlen oracle."""

from __future__ import annotations

import torch

from ..dispatch import reference
from ..varlen_attention.paged import gather_pages
from ..varlen_attention.reference import varlen_attention_reference

__all__ = ["gather_pages", "paged_decode_attention_reference"]


@reference
def paged_decode_attention_reference(
    q: torch.Tensor,
    k_pages: torch.Tensor,
    v_pages: torch.Tensor,
    page_table: torch.Tensor,
    lengths: torch.Tensor,
    softmax_scale: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``q [B, Hq, D]`` (one new token per stream), ``k/v_pages [P, S, Hkv, D]``, ``page_table
    [B, max_pages]``, ``lengths [B]`` -> ``(out [B, Hq, D], lse [B, Hq])``. Stream ``b`` sees its
    first ``lengths[b]`` cached tokens. A stream with no token gets output 0 and lse -inf."""
    k, v, cu_k = gather_pages(k_pages, v_pages, page_table, lengths)
    cu_q = torch.arange(q.shape[0] + 1, dtype=torch.int32)
    out, lse = varlen_attention_reference(q, k, v, cu_q, cu_k, causal=False, softmax_scale=softmax_scale)
    return out, lse.transpose(0, 1)
