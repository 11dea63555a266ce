"""Pure-torch paged decode attention: gather each stream's pages, then the varlen oracle."""

from __future__ import annotations

import torch

from ..attention.reference import varlen_attention_reference

__all__ = ["paged_decode_attention_reference"]


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
    first ``lengths[b]`` cached tokens: slot ``j`` lives in page ``page_table[b, j // S]`` at
    ``j % S``. A stream with no token gets output 0 and lse -inf."""
    page = k_pages.shape[1]
    cu_q = torch.tensor([0, 1], dtype=torch.int32)
    outs, lses = [], []
    for b, n in enumerate(lengths.tolist()):
        pages = page_table[b, : -(-n // page)].long()
        k = k_pages[pages].flatten(0, 1)[:n]
        v = v_pages[pages].flatten(0, 1)[:n]
        cu_k = torch.tensor([0, n], dtype=torch.int32)
        out, lse = varlen_attention_reference(q[b : b + 1], k, v, cu_q, cu_k, causal=False, softmax_scale=softmax_scale)
        outs.append(out)
        lses.append(lse[:, 0])
    return torch.cat(outs), torch.stack(lses)
