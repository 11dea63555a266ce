"""Varlen attention by PyTorch's SDPA, one call per document: the fast torch path on CPU.

The kernels' references are written for checking (fp32 math, explicit masks, log-sum-exp) and cost
about 3x more per call on CPU than SDPA's fused kernel; SDPA gives no log-sum-exp.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["varlen_attention_sdpa"]


def varlen_attention_sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens_q: torch.Tensor,
                          cu_seqlens_k: torch.Tensor, causal: bool, scale: float) -> torch.Tensor:
    """``q [Tq, Hq, D]``, ``k/v [Tk, Hkv, D]`` -> ``out [Tq, Hq, D]``; causal masks bottom-right."""
    cu_q, cu_k = cu_seqlens_q.tolist(), cu_seqlens_k.tolist()
    out = q.new_zeros(q.shape)  # rows of no document, and documents without keys, stay 0
    for b in range(len(cu_q) - 1):
        lq, lk = cu_q[b + 1] - cu_q[b], cu_k[b + 1] - cu_k[b]
        if lq == 0 or lk == 0:
            continue
        # [1, H, L, D]: batched 4D inputs take the fused CPU kernel (3D ones its math path, ~3x slower)
        qb, kb, vb = (t[c[b] : c[b + 1]].transpose(0, 1)[None] for t, c in ((q, cu_q), (k, cu_k), (v, cu_k)))
        mask, blind = None, None
        if causal and lq > 1:
            mask = torch.ones(lq, lk, dtype=torch.bool, device=q.device).tril(lk - lq)
            if lq > lk:  # queries before every key see nothing: attend to all, then give 0 (finite gradients)
                blind = ~mask.any(-1)
                mask = mask | blind[:, None]
        o = F.scaled_dot_product_attention(qb, kb, vb, attn_mask=mask, scale=scale, enable_gqa=True)[0]
        if blind is not None:
            o = o.masked_fill(blind[None, :, None], 0.0)
        out[cu_q[b] : cu_q[b + 1]] = o.transpose(0, 1)
    return out
