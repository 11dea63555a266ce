"""Varlen attention by PyTorch's SDPA: the fast torch path on CPU.

The kernels' references are written for checking (fp32 math, explicit masks, log-sum-exp) and cost
about 3x more per call on CPU than SDPA's fused kernel; SDPA gives no log-sum-exp. Documents of one
length with their queries aligned to their keys (a ViT's frame groups, a uniform pack) take one
batched call; others one call each. The inputs are cut with one ``split`` and the outputs joined
with one ``cat``: slicing per document would make the backward zero-fill and add a full-size
gradient per document (quadratic in the document count).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..dispatch import reference

__all__ = ["varlen_attention_sdpa"]


@reference
def varlen_attention_sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens_q: torch.Tensor,
                          cu_seqlens_k: torch.Tensor, causal: bool, scale: float) -> torch.Tensor:
    """``q [Tq, Hq, D]``, ``k/v [Tk, Hkv, D]`` -> ``out [Tq, Hq, D]``; causal masks bottom-right.
    Rows of no document, and documents without keys, are 0."""
    cu_q, cu_k = cu_seqlens_q.tolist(), cu_seqlens_k.tolist()
    len_q = [b - a for a, b in zip(cu_q, cu_q[1:])]
    len_k = [b - a for a, b in zip(cu_k, cu_k[1:])]
    batched = len_q == len_k and len(set(len_q)) == 1 and len_q[0] > 0
    (before, *qs, after), ks, vs = (_documents(t, c, n, batched) for t, c, n in ((q, cu_q, len_q), (k, cu_k, len_k),
                                                                                (v, cu_k, len_k)))
    if batched:
        b, n = len(len_q), len_q[0]
        qb, kb, vb = (t.reshape(b, n, *t.shape[1:]).transpose(1, 2) for t in (qs[0], ks[1], vs[1]))
        out = F.scaled_dot_product_attention(qb, kb, vb, is_causal=causal, scale=scale, enable_gqa=True)
        docs = [out.transpose(1, 2).reshape(b * n, *q.shape[1:])]
    else:
        docs = [_attend(qd, kd, vd, causal, scale) for qd, kd, vd in zip(qs, ks[1:-1], vs[1:-1])]
    return torch.cat([q.new_zeros(before.shape), *docs, q.new_zeros(after.shape)])


def _documents(t: torch.Tensor, cu: list[int], lengths: list[int], joined: bool) -> list[torch.Tensor]:
    """``[rows before the first document, each document (all in one piece if joined), rows after
    the last]``, by splits."""
    before, docs, after = t.split([cu[0], cu[-1] - cu[0], t.shape[0] - cu[-1]])
    return [before, docs, after] if joined else [before, *docs.split(lengths), after]


def _attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool, scale: float) -> torch.Tensor:
    """One document: ``q [lq, Hq, D]``, ``k/v [lk, Hkv, D]`` -> ``[lq, Hq, D]``."""
    lq, lk = q.shape[0], k.shape[0]
    if lq == 0 or lk == 0:
        return q.new_zeros(q.shape)
    mask, blind = None, None
    if causal and lq > 1:
        mask = torch.ones(lq, lk, dtype=torch.bool, device=q.device).tril(lk - lq)
        if lq > lk:  # queries before every key see nothing: attend to all, then give 0 (finite gradients)
            blind = ~mask.any(-1)
            mask = mask | blind[:, None]
    # [1, H, L, D]: batched 4D inputs take the fused CPU kernel (3D ones its math path, ~3x slower)
    o = F.scaled_dot_product_attention(q.transpose(0, 1)[None], k.transpose(0, 1)[None], v.transpose(0, 1)[None],
                                       attn_mask=mask, scale=scale, enable_gqa=True)[0]
    if blind is not None:
        o = o.masked_fill(blind[None, :, None], 0.0)
    return o.transpose(0, 1)
