"""Triton in-place re-rotation of cached keys: one program per (key, block of heads)."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

__all__ = ["rerotate_keys_fwd"]


@triton.jit
def _rerotate_kernel(K, SLOT, ROW, COS, SIN, stride_s, stride_h, H, HALF: tl.constexpr, BH: tl.constexpr,
                     BD: tl.constexpr):
    i, hb = tl.program_id(0), tl.program_id(1)
    slot = tl.load(SLOT + i).to(tl.int64)
    row = tl.load(ROW + i).to(tl.int64)
    o_h = hb * BH + tl.arange(0, BH)
    o_d = tl.arange(0, BD)
    m = (o_h < H)[:, None] & (o_d < HALF)[None, :]
    c = tl.load(COS + row * HALF + o_d, mask=o_d < HALF, other=1.0)[None, :]
    s = tl.load(SIN + row * HALF + o_d, mask=o_d < HALF, other=0.0)[None, :]
    p1 = K + slot * stride_s + o_h[:, None] * stride_h + o_d[None, :]
    k1 = tl.load(p1, mask=m, other=0.0).to(tl.float32)
    k2 = tl.load(p1 + HALF, mask=m, other=0.0).to(tl.float32)
    tl.store(p1, (k1 * c - k2 * s).to(K.dtype.element_ty), mask=m)
    tl.store(p1 + HALF, (k2 * c + k1 * s).to(K.dtype.element_ty), mask=m)


def rerotate_keys_fwd(keys: torch.Tensor, slots: torch.Tensor, rows: torch.Tensor, cos: torch.Tensor,
                      sin: torch.Tensor) -> None:
    n = slots.numel()
    if n == 0:
        return
    _, h, d = keys.shape
    half = d // 2
    bh = min(triton.next_power_of_2(h), 8)
    _rerotate_kernel[(n, triton.cdiv(h, bh))](keys, slots, rows, cos, sin, keys.stride(0), keys.stride(1), h,
                                               HALF=half, BH=bh, BD=triton.next_power_of_2(half))
