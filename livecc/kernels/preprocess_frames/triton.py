"""One Triton pass from uint8 frames to Qwen2-VL ViT patch rows: resize + rescale + normalise + patchify.

The antialiased bicubic resize is separable; its per-axis taps and weights (``aa_bicubic_taps``)
reproduce PyTorch's ``interpolate(mode="bicubic", antialias=True)`` (what torchvision's resize
uses), and the kernel applies both axes at once for each output value, rounds to uint8 as the
reference path does, then normalises and writes it straight into its place in the patch rows.
"""

from __future__ import annotations

from functools import lru_cache

import torch
import triton
import triton.language as tl

from .reference import PatchGeometry

__all__ = ["aa_bicubic_taps", "preprocess_frames_fwd"]


@lru_cache(maxsize=64)
def _taps_cpu(in_size: int, out_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    scale = in_size / out_size
    support = 2.0 * scale if scale > 1 else 2.0
    inv = 1.0 / scale if scale > 1 else 1.0
    center = scale * (torch.arange(out_size, dtype=torch.float64) + 0.5)
    first = (center - support + 0.5).to(torch.int64).clamp(min=0)  # int() truncation, as PyTorch's kernel
    last = (center + support + 0.5).to(torch.int64).clamp(max=in_size)
    n_taps = int((last - first).max())
    j = torch.arange(n_taps, dtype=torch.float64)
    x = ((j[None, :] + first[:, None] - center[:, None] + 0.5) * inv).abs()
    a = -0.5  # bicubic coefficient of the antialiased kernel (as PIL)
    w = torch.where(x < 1, ((a + 2) * x - (a + 3)) * x * x + 1,
                    torch.where(x < 2, (((x - 5) * x + 8) * x - 4) * a, torch.zeros_like(x)))
    w = torch.where(j[None, :] < (last - first)[:, None], w, 0.0)
    w = w / w.sum(dim=1, keepdim=True)
    return first.to(torch.int32), w.to(torch.float32)


def aa_bicubic_taps(in_size: int, out_size: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """First input index ``[out]`` and weights ``[out, taps]`` of the antialiased bicubic resize."""
    first, w = _taps_cpu(in_size, out_size)
    return first.to(device), w.to(device)


@triton.jit
def _preprocess_kernel(
    X, Y, Y0, WY, X0, WX, MEAN, STD,
    T, H, W, stride_t, stride_h, grid_h, grid_w,
    TP: tl.constexpr, P: tl.constexpr, M: tl.constexpr, KY: tl.constexpr, KX: tl.constexpr,
    ROW: tl.constexpr, BLOCK: tl.constexpr,
):
    i_r = tl.program_id(0).to(tl.int64)  # one ViT patch row per program
    # Row order of Qwen2-VL: (t, h-block, w-block, h-in-block, w-in-block).
    per_t = grid_h * grid_w
    i_t = i_r // per_t
    rem = i_r % per_t
    i_bh = rem // (M * M * (grid_w // M))
    rem = rem % (M * M * (grid_w // M))
    i_bw = rem // (M * M)
    rem = rem % (M * M)
    py = i_bh * M + rem // M
    px = i_bw * M + rem % M
    # Column order: (channel, temporal, y-in-patch, x-in-patch).
    o_c = tl.arange(0, BLOCK)
    m_c = o_c < ROW
    ch = o_c // (TP * P * P)
    tt = (o_c // (P * P)) % TP
    y = py * P + (o_c // P) % P
    x = px * P + o_c % P
    frame = tl.minimum(i_t * TP + tt, T - 1)  # an odd last frame repeats, as Hugging Face pads
    y0 = tl.load(Y0 + y, mask=m_c, other=0)
    x0 = tl.load(X0 + x, mask=m_c, other=0)
    acc = tl.zeros([BLOCK], dtype=tl.float32)
    base = X + frame * stride_t + ch
    for i in range(KY):
        wy = tl.load(WY + y * KY + i, mask=m_c, other=0.0)
        yy = tl.minimum(y0 + i, H - 1)
        row = tl.zeros([BLOCK], dtype=tl.float32)
        for j in range(KX):
            wx = tl.load(WX + x * KX + j, mask=m_c, other=0.0)
            xx = tl.minimum(x0 + j, W - 1)
            pix = tl.load(base + yy * stride_h + xx * 3, mask=m_c & (wx != 0.0), other=0)
            row += wx * pix.to(tl.float32)
        acc += wy * row
    level = tl.minimum(tl.maximum(tl.floor(acc + 0.5), 0.0), 255.0)  # the reference path's uint8 rounding
    mean = tl.load(MEAN + ch, mask=m_c, other=0.0)
    std = tl.load(STD + ch, mask=m_c, other=1.0)
    out = (level * (1.0 / 255.0) - mean) / std
    tl.store(Y + i_r * ROW + o_c, out.to(Y.dtype.element_ty), mask=m_c)


def preprocess_frames_fwd(frames: torch.Tensor, size: tuple[int, int], spec: PatchGeometry,
                          dtype: torch.dtype) -> torch.Tensor:
    """Patch rows ``[rows, row_size]`` of uint8 frames ``[T, H, W, 3]`` resized to ``size``."""
    t, h, w, _ = frames.shape
    oh, ow = size
    p, tp, m = spec.patch_size, spec.temporal_patch_size, spec.merge_size
    gt, gh, gw = triton.cdiv(t, tp), oh // p, ow // p
    frames = frames.contiguous()
    y0, wy = aa_bicubic_taps(h, oh, frames.device)
    x0, wx = aa_bicubic_taps(w, ow, frames.device)
    mean = torch.tensor(spec.mean, dtype=torch.float32, device=frames.device)
    std = torch.tensor(spec.std, dtype=torch.float32, device=frames.device)
    row = spec.row_size
    out = torch.empty((gt * gh * gw, row), dtype=dtype, device=frames.device)
    _preprocess_kernel[(out.shape[0],)](
        frames, out, y0, wy, x0, wx, mean, std, t, h, w, frames.stride(0), frames.stride(1), gh, gw,
        TP=tp, P=p, M=m, KY=wy.shape[1], KX=wx.shape[1], ROW=row, BLOCK=triton.next_power_of_2(row),
    )
    return out
