"""Triton row kernel of the text-only linear cross-entropy.

The logits of the labelled rows come from one cuBLAS GEMM into a buffer of the input dtype; one
program per row then reads the row twice (an online max / sum-exp in fp32 registers, then the
gradient), writes the row's loss, and overwrites the logits in place with ``scale_r * d(loss_r) /
d(logits)`` so the two backward GEMMs (dX, dW) read it directly. Traffic: three passes over the
``[rows, V]`` buffer; nothing of size ``N x V`` or ``V x H`` besides the gradients themselves.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..dispatch import interpreting

__all__ = ["text_only_linear_cross_entropy_fwd"]


@triton.jit
def _rows_kernel(Z, stride_z, Y, SCALE, LOSS, V, smoothing, WRITE_GRAD: tl.constexpr, BV: tl.constexpr):
    i_r = tl.program_id(0).to(tl.int64)
    p_z = Z + i_r * stride_z
    y = tl.load(Y + i_r)
    o_v = tl.arange(0, BV)
    b_m = tl.full([BV], float("-inf"), dtype=tl.float32)  # per-lane running max and sum-exp
    b_s = tl.zeros([BV], dtype=tl.float32)
    b_zsum = tl.zeros([BV], dtype=tl.float32)
    for v0 in range(0, V, BV):
        m_v = v0 + o_v < V
        b_z = tl.load(p_z + v0 + o_v, mask=m_v, other=float("-inf")).to(tl.float32)
        m_new = tl.maximum(b_m, b_z)
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        b_s = b_s * tl.exp(b_m - m_safe) + tl.exp(b_z - m_safe)
        b_m = m_new
        b_zsum += tl.where(m_v, b_z, 0.0)
    m = tl.max(b_m, axis=0)
    lse = m + tl.log(tl.sum(b_s * tl.exp(b_m - m), axis=0))
    z_y = tl.load(p_z + y).to(tl.float32)
    tl.store(LOSS + i_r, lse - (1.0 - smoothing) * z_y - smoothing / V * tl.sum(b_zsum, axis=0))
    if WRITE_GRAD:
        scale = tl.load(SCALE + i_r)
        for v0 in range(0, V, BV):
            m_v = v0 + o_v < V
            b_z = tl.load(p_z + v0 + o_v, mask=m_v, other=0.0).to(tl.float32)
            b_g = tl.exp(b_z - lse) - smoothing / V
            b_g = tl.where(v0 + o_v == y, b_g - (1.0 - smoothing), b_g)
            tl.store(p_z + v0 + o_v, (b_g * scale).to(Z.dtype.element_ty), mask=m_v)


def text_only_linear_cross_entropy_fwd(logits: torch.Tensor, labels: torch.Tensor, smoothing: float,
                                       row_scale: torch.Tensor | None) -> torch.Tensor:
    """Per-row losses ``[R]`` (fp32) of ``logits [R, V]`` against ``labels [R]``; with ``row_scale
    [R]`` the logits are overwritten with ``row_scale * d(loss) / d(logits)``."""
    rows, vocab = logits.shape
    losses = torch.empty(rows, dtype=torch.float32, device=logits.device)
    if rows == 0:
        return losses
    block = min(triton.next_power_of_2(vocab), 1024 if interpreting() else 4096)
    _rows_kernel[(rows,)](
        logits, logits.stride(0), labels, row_scale if row_scale is not None else losses, losses, vocab,
        float(smoothing), WRITE_GRAD=row_scale is not None, BV=block, num_warps=8,
    )
    return losses
