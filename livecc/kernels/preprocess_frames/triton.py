"""One Triton launch from uint8 frames to Qwen2-VL ViT patch rows: resize + rescale + normalise + patchify.

The antialiased bicubic resize is separable; its per-axis taps and weights (``aa_bicubic_taps``)
reproduce PyTorch's ``interpolate(mode="bicubic", antialias=True)`` (what torchvision's resize
uses). Each program owns one channel of one output tile of one frame and runs both passes as
matrix products against banded weight tiles gathered from the taps: the horizontal pass's result
for a strip of input rows stays in registers for the vertical pass, so a frame is read about once
and never written at full resolution. The result is rounded to uint8 as the reference path does,
normalised, and stored straight into its place in the patch rows. The products use three-pass TF32
(about fp32 accuracy) so that the rounding to uint8 lands where the fp32 reference's does.
"""

from __future__ import annotations

from functools import lru_cache

import torch
import triton
import triton.language as tl

from ..dispatch import interpreting
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


_DEVICE_TAPS: dict[tuple[int, int, torch.device], tuple[torch.Tensor, torch.Tensor]] = {}


def aa_bicubic_taps(in_size: int, out_size: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """First input index ``[out]`` and weights ``[out, taps]`` of the antialiased bicubic resize,
    computed once per (in size, out size) and kept on each device that asked for them."""
    key = (in_size, out_size, torch.device(device))
    if key not in _DEVICE_TAPS:
        first, w = _taps_cpu(in_size, out_size)
        _DEVICE_TAPS[key] = (first.to(device), w.to(device))
    return _DEVICE_TAPS[key]


@lru_cache(maxsize=16)
def _normalisation(mean: tuple, std: tuple, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and std on ``device``, copied there once (not a host-to-device copy per call)."""
    return (torch.tensor(mean, dtype=torch.float32, device=device),
            torch.tensor(std, dtype=torch.float32, device=device))


@triton.jit
def _band(FIRST, W, o, o_mask, i, n_in, TAPS):
    """Weights ``[len(o), len(i)]`` of outputs ``o`` on inputs ``i``: the taps where ``i`` falls in
    an output's window, zero elsewhere (and past the input's end)."""
    first = tl.load(FIRST + o, mask=o_mask, other=0)
    j = i[None, :] - first[:, None]
    inside = o_mask[:, None] & (j >= 0) & (j < TAPS) & (i[None, :] < n_in)
    return tl.load(W + o[:, None] * TAPS + j, mask=inside, other=0.0)


# Sizes and tap counts are run-time values, not specialised on: one compiled kernel serves every
# frame size and resize ratio a stream or a loader meets.
@triton.jit(do_not_specialize=["T", "H", "W", "OH", "OW", "stride_t", "stride_h", "grid_w", "KY", "KX"])
def _preprocess_kernel(
    X, Y, Y0, WY, X0, WX, MEAN, STD,
    T, H, W, OH, OW, stride_t, stride_h, grid_w, KY, KX,
    TP: tl.constexpr, P: tl.constexpr, M: tl.constexpr,
    BY: tl.constexpr, BX: tl.constexpr, KR: tl.constexpr, KC: tl.constexpr, PRECISION: tl.constexpr,
):
    i_f, i_tile, ch = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    n_tx = tl.cdiv(OW, BX)
    oy = (i_tile // n_tx) * BY + tl.arange(0, BY)
    ox = (i_tile % n_tx) * BX + tl.arange(0, BX)
    m_y, m_x = oy < OH, ox < OW
    # The input window this tile reads: from the first tap of its first output to the last of its last.
    row_lo = tl.load(Y0 + tl.min(tl.where(m_y, oy, OH - 1)))
    row_hi = tl.minimum(tl.load(Y0 + tl.max(tl.where(m_y, oy, 0))) + KY, H)
    col_lo = tl.load(X0 + tl.min(tl.where(m_x, ox, OW - 1)))
    col_hi = tl.minimum(tl.load(X0 + tl.max(tl.where(m_x, ox, 0))) + KX, W)
    frame = tl.minimum(i_f, T - 1).to(tl.int64)  # an odd last frame repeats, as Hugging Face pads
    base = X + frame * stride_t + ch
    acc = tl.zeros([BY, BX], dtype=tl.float32)
    for r0 in range(row_lo, row_hi, KR):
        rows = r0 + tl.arange(0, KR)
        strip = tl.zeros([KR, BX], dtype=tl.float32)  # horizontal pass of KR input rows, on-chip
        for c0 in range(col_lo, col_hi, KC):
            cols = c0 + tl.arange(0, KC)
            pix = tl.load(base + rows[:, None] * stride_h + cols[None, :] * 3,
                          mask=(rows[:, None] < row_hi) & (cols[None, :] < col_hi), other=0)
            wx = tl.trans(_band(X0, WX, ox, m_x, cols, W, KX))  # [KC, BX]
            strip = tl.dot(pix.to(tl.float32), wx, strip, input_precision=PRECISION)
        wy = _band(Y0, WY, oy, m_y, rows, H, KY)  # [BY, KR]
        acc = tl.dot(wy, strip, acc, input_precision=PRECISION)
    level = tl.minimum(tl.maximum(tl.floor(acc + 0.5), 0.0), 255.0)  # the reference path's uint8 rounding
    out = (level * (1.0 / 255.0) - tl.load(MEAN + ch)) / tl.load(STD + ch)
    # Qwen2-VL's patch rows: row (t, h-block, w-block, h-in-block, w-in-block), column
    # (channel, temporal, y-in-patch, x-in-patch).
    py, px = oy // P, ox // P
    row = ((i_f // TP) * (OH // P) * grid_w + ((py // M) * (M * grid_w) + (py % M) * M)[:, None]
           + ((px // M) * (M * M) + px % M)[None, :])
    col = ch * (TP * P * P) + (i_f % TP) * (P * P) + ((oy % P) * P)[:, None] + (ox % P)[None, :]
    tl.store(Y + row.to(tl.int64) * (3 * TP * P * P) + col, out.to(Y.dtype.element_ty),
             mask=m_y[:, None] & m_x[None, :])


def preprocess_frames_fwd(frames: torch.Tensor, size: tuple[int, int], spec: PatchGeometry,
                          dtype: torch.dtype) -> torch.Tensor:
    """Patch rows ``[rows, row_size]`` of uint8 frames ``[T, H, W, 3]`` resized to ``size``."""
    t, h, w, _ = frames.shape
    oh, ow = size
    p, tp, m = spec.patch_size, spec.temporal_patch_size, spec.merge_size
    gt, gh, gw = triton.cdiv(t, tp), oh // p, ow // p
    if frames.stride(3) != 1 or frames.stride(2) != 3:
        frames = frames.contiguous()
    y0, wy = aa_bicubic_taps(h, oh, frames.device)
    x0, wx = aa_bicubic_taps(w, ow, frames.device)
    mean, std = _normalisation(spec.mean, spec.std, frames.device)
    out = torch.empty((gt * gh * gw, spec.row_size), dtype=dtype, device=frames.device)
    tile = 16 if interpreting() else 32
    grid = (gt * tp, triton.cdiv(oh, tile) * triton.cdiv(ow, tile), 3)
    _preprocess_kernel[grid](
        frames, out, y0, wy, x0, wx, mean, std, t, h, w, oh, ow, frames.stride(0), frames.stride(1), gw,
        wy.shape[1], wx.shape[1], TP=tp, P=p, M=m, BY=tile, BX=tile, KR=tile, KC=tile,
        PRECISION="tf32x3",
    )
    return out
