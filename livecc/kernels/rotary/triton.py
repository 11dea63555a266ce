"""One Triton pass rotating the queries and keys of a layer: a program per (token, block of heads)
reads its ``cos``/``sin`` row once and rotates every query and key head of that token, in place of
Hugging Face's ten elementwise kernels (two products, a ``cat`` and a sum for each of q and k). The
backward is the transposed rotation (by ``-sin``, the two halves' sines swapped).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

__all__ = ["rotary_qk_fwd"]


@triton.jit
def _rotate(X, Y, b, t, h, H, sx_b, sx_h, sx_l, sy_b, sy_h, sy_l, c1, c2, s1, s2,
            HALF: tl.constexpr, BH: tl.constexpr, BD: tl.constexpr):
    o_h = h + tl.arange(0, BH)
    o_d = tl.arange(0, BD)
    mask = (o_h[:, None] < H) & (o_d[None, :] < HALF)
    x_ptr = X + b * sx_b + t * sx_l + o_h[:, None] * sx_h + o_d[None, :]
    y_ptr = Y + b * sy_b + t * sy_l + o_h[:, None] * sy_h + o_d[None, :]
    x1 = tl.load(x_ptr, mask=mask, other=0.0).to(tl.float32)
    x2 = tl.load(x_ptr + HALF, mask=mask, other=0.0).to(tl.float32)
    tl.store(y_ptr, (x1 * c1[None, :] - x2 * s1[None, :]).to(Y.dtype.element_ty), mask=mask)
    tl.store(y_ptr + HALF, (x2 * c2[None, :] + x1 * s2[None, :]).to(Y.dtype.element_ty), mask=mask)


@triton.jit(do_not_specialize=["L"])  # one kernel for every length: a prefill's, a decode step's
def _rotary_kernel(
    Q, K, QO, KO, COS, SIN, L, HQ, HK,
    sq_b, sq_h, sq_l, sk_b, sk_h, sk_l, sqo_b, sqo_h, sqo_l, sko_b, sko_h, sko_l, sc_b, sc_l,
    INVERSE: tl.constexpr, HALF: tl.constexpr, BH: tl.constexpr, BD: tl.constexpr,
):
    i_bl, i_h = tl.program_id(0), tl.program_id(1) * BH
    b, t = i_bl // L, i_bl % L
    o_d = tl.arange(0, BD)
    m_d = o_d < HALF
    row = b.to(tl.int64) * sc_b + t * sc_l
    c1 = tl.load(COS + row + o_d, mask=m_d, other=0.0).to(tl.float32)
    c2 = tl.load(COS + row + HALF + o_d, mask=m_d, other=0.0).to(tl.float32)
    s1 = tl.load(SIN + row + o_d, mask=m_d, other=0.0).to(tl.float32)
    s2 = tl.load(SIN + row + HALF + o_d, mask=m_d, other=0.0).to(tl.float32)
    if INVERSE:  # the transpose: dx1 = dy1 c1 + dy2 s2, dx2 = dy2 c2 - dy1 s1
        s1, s2 = -s2, -s1
    b, t = b.to(tl.int64), t.to(tl.int64)
    if i_h < HQ:
        _rotate(Q, QO, b, t, i_h, HQ, sq_b, sq_h, sq_l, sqo_b, sqo_h, sqo_l, c1, c2, s1, s2, HALF, BH, BD)
    if i_h < HK:
        _rotate(K, KO, b, t, i_h, HK, sk_b, sk_h, sk_l, sko_b, sko_h, sko_l, c1, c2, s1, s2, HALF, BH, BD)


def _like(x: torch.Tensor) -> torch.Tensor:
    """An output laid out as ``x`` is when it comes from a ``[B, L, H, D]`` projection viewed as
    ``[B, H, L, D]``, so the attention op after it reads the layout it always did."""
    b, h, l, d = x.shape
    return x.new_empty((b, l, h, d)).transpose(1, 2)


def rotary_qk_fwd(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                  inverse: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotated ``q [B, Hq, L, D]`` and ``k [B, Hk, L, D]`` (any strides, last dim contiguous);
    ``inverse`` applies the transpose (the backward)."""
    b, hq, length, d = q.shape
    hk = k.shape[1]
    q, k = (x if x.stride(-1) == 1 else x.contiguous() for x in (q, k))
    cos, sin = cos.expand(b, length, d).contiguous(), sin.expand(b, length, d).contiguous()
    qo, ko = _like(q), _like(k)
    bh = min(triton.next_power_of_2(max(hq, hk)), 16)
    grid = (b * length, triton.cdiv(max(hq, hk), bh))
    _rotary_kernel[grid](
        q, k, qo, ko, cos, sin, length, hq, hk, q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1),
        k.stride(2), qo.stride(0), qo.stride(1), qo.stride(2), ko.stride(0), ko.stride(1), ko.stride(2),
        cos.stride(0), cos.stride(1), INVERSE=inverse, HALF=d // 2, BH=bh,
        BD=triton.next_power_of_2(d // 2),
    )
    return qo, ko
