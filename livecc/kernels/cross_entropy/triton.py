"""Triton kernels of the text-only linear cross-entropy.

Per chunk of labelled rows: ``_logits_stats_kernel`` computes logit tiles with ``tl.dot`` (fp32
accumulation) and per-tile max / sum-exp / sum / target logit, combined into an exact
log-sum-exp; when gradients are wanted it also keeps the chunk's fp32 logits, which
``_softmax_grad_kernel`` turns into ``dlogits`` for two cuBLAS GEMMs (``dh``, ``dW``).
Extra memory is one chunk: ``rows x V x (4 + itemsize)`` bytes, never ``N x V``.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..dispatch import interpreting

__all__ = ["linear_cross_entropy_chunks"]


@triton.jit
def _logits_stats_kernel(
    h_ptr, w_ptr, b_ptr, y_ptr, logits_ptr, max_ptr, sumexp_ptr, zsum_ptr, ztarget_ptr,
    R, V, H, stride_h, stride_w, stride_l, n_vblocks,
    HAS_BIAS: tl.constexpr, STORE_LOGITS: tl.constexpr, PRECISION: tl.constexpr, DOT_FP32: tl.constexpr,
    BM: tl.constexpr, BV: tl.constexpr, BK: tl.constexpr,
):
    i_m = tl.program_id(0).to(tl.int64)
    i_v = tl.program_id(1).to(tl.int64)
    o_m = i_m * BM + tl.arange(0, BM)
    o_v = i_v * BV + tl.arange(0, BV)
    m_m = o_m < R
    m_v = o_v < V
    acc = tl.zeros([BM, BV], dtype=tl.float32)
    for k in range(0, H, BK):
        o_k = k + tl.arange(0, BK)
        m_k = o_k < H
        b_h = tl.load(h_ptr + o_m[:, None] * stride_h + o_k[None, :], mask=m_m[:, None] & m_k[None, :], other=0.0)
        b_w = tl.load(w_ptr + o_v[None, :] * stride_w + o_k[:, None], mask=m_v[None, :] & m_k[:, None], other=0.0)
        if DOT_FP32:
            b_h, b_w = b_h.to(tl.float32), b_w.to(tl.float32)
        acc = tl.dot(b_h, b_w, acc, input_precision=PRECISION)
    if HAS_BIAS:
        acc += tl.load(b_ptr + o_v, mask=m_v, other=0.0).to(tl.float32)[None, :]
    if STORE_LOGITS:
        p_l = logits_ptr + o_m[:, None] * stride_l + o_v[None, :]
        tl.store(p_l, acc, mask=m_m[:, None] & m_v[None, :])
    z = tl.where(m_v[None, :], acc, float("-inf"))
    b_max = tl.max(z, axis=1)
    b_sumexp = tl.sum(tl.exp(z - b_max[:, None]), axis=1)
    b_zsum = tl.sum(tl.where(m_v[None, :], acc, 0.0), axis=1)
    o_stat = o_m * n_vblocks + i_v
    tl.store(max_ptr + o_stat, b_max, mask=m_m)
    tl.store(sumexp_ptr + o_stat, b_sumexp, mask=m_m)
    tl.store(zsum_ptr + o_stat, b_zsum, mask=m_m)
    y = tl.load(y_ptr + o_m, mask=m_m, other=-1)
    b_target = tl.sum(tl.where(o_v[None, :] == y[:, None], acc, 0.0), axis=1)
    in_tile = (y >= i_v * BV) & (y < i_v * BV + BV)
    tl.store(ztarget_ptr + o_m, b_target, mask=m_m & in_tile)


@triton.jit
def _softmax_grad_kernel(
    logits_ptr, dlogits_ptr, lse_ptr, y_ptr, scale_ptr,
    R, V, stride_l, stride_d, smoothing,
    BR: tl.constexpr, BV: tl.constexpr,
):
    """dlogits = scale_r * (softmax(z) - (1 - eps) * onehot(y) - eps / V)."""
    i_r = tl.program_id(0).to(tl.int64)
    i_v = tl.program_id(1).to(tl.int64)
    o_r = i_r * BR + tl.arange(0, BR)
    o_v = i_v * BV + tl.arange(0, BV)
    m = (o_r < R)[:, None] & (o_v < V)[None, :]
    z = tl.load(logits_ptr + o_r[:, None] * stride_l + o_v[None, :], mask=m, other=0.0)
    lse = tl.load(lse_ptr + o_r, mask=o_r < R, other=0.0)
    y = tl.load(y_ptr + o_r, mask=o_r < R, other=-1)
    scale = tl.load(scale_ptr + o_r, mask=o_r < R, other=0.0)
    g = tl.exp(z - lse[:, None]) - smoothing / V
    g = tl.where(o_v[None, :] == y[:, None], g - (1.0 - smoothing), g)
    g = g * scale[:, None]
    tl.store(dlogits_ptr + o_r[:, None] * stride_d + o_v[None, :], g.to(dlogits_ptr.dtype.element_ty), mask=m)


# Triton's interpreter (3.9) returns garbage from tl.dot on bf16 operands; it gets fp32 operands
# (DOT_FP32), the GPU keeps bf16 tensor-core MMAs. Products of bf16 values are exact in fp32 either way.
def _configs(V: int, H: int) -> tuple[dict, dict]:
    """Block sizes: MMA-sized tiles on GPU; few, wide programs in the interpreter (per-program cost)."""
    if interpreting():
        gemm = dict(BM=16, BV=min(4096, triton.next_power_of_2(V)), BK=min(64, triton.next_power_of_2(H)))
        grad = dict(BR=16, BV=min(4096, triton.next_power_of_2(V)))
    else:
        gemm = dict(BM=64, BV=128, BK=64, num_warps=8, num_stages=3)
        grad = dict(BR=4, BV=1024, num_warps=8)
    return gemm, grad


def linear_cross_entropy_chunks(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    bias: torch.Tensor | None,
    smoothing: float,
    row_scale: torch.Tensor | None,
    chunk_rows: int,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """Per-row losses ``[R]`` of labelled rows; with ``row_scale`` ``[R]`` also the gradients
    ``(dh [R, H], dW [V, H], db [V])`` of ``sum(row_scale * loss)``."""
    R, H = hidden.shape
    V = weight.shape[0]
    hidden, weight = hidden.contiguous(), weight.contiguous()
    gemm, grad_cfg = _configs(V, H)
    n_vblocks = triton.cdiv(V, gemm["BV"])
    want_grad = row_scale is not None
    C = max(1, min(R, chunk_rows))
    dev = hidden.device
    stats = [torch.empty(C, n_vblocks, device=dev, dtype=torch.float32) for _ in range(3)]
    z_target = torch.empty(C, device=dev, dtype=torch.float32)
    logits = torch.empty(C, V, device=dev, dtype=torch.float32) if want_grad else z_target
    dlogits = torch.empty(C, V, device=dev, dtype=weight.dtype) if want_grad else None
    losses = torch.empty(R, device=dev, dtype=torch.float32)
    dh = torch.empty_like(hidden) if want_grad else None
    dw = torch.zeros_like(weight) if want_grad else None
    db = torch.zeros(V, device=dev, dtype=torch.float32) if want_grad and bias is not None else None
    precision = "ieee" if hidden.dtype == torch.float32 else "tf32"
    for c0 in range(0, R, C):
        rows = min(C, R - c0)
        h_c, y_c = hidden[c0 : c0 + rows], labels[c0 : c0 + rows]
        grid = (triton.cdiv(rows, gemm["BM"]), n_vblocks)
        _logits_stats_kernel[grid](
            h_c, weight, bias if bias is not None else weight, y_c, logits, *stats, z_target,
            rows, V, H, h_c.stride(0), weight.stride(0), logits.stride(0) if want_grad else 0, n_vblocks,
            HAS_BIAS=bias is not None, STORE_LOGITS=want_grad, PRECISION=precision,
            DOT_FP32=interpreting(), **gemm,
        )
        tile_max, tile_sumexp, tile_zsum = (s[:rows] for s in stats)
        row_max = tile_max.max(dim=1).values
        lse = row_max + torch.log((tile_sumexp * torch.exp(tile_max - row_max[:, None])).sum(dim=1))
        z_y = z_target[:rows]
        losses[c0 : c0 + rows] = lse - (1 - smoothing) * z_y - smoothing / V * tile_zsum.sum(dim=1)
        if not want_grad:
            continue
        g_grid = (triton.cdiv(rows, grad_cfg["BR"]), triton.cdiv(V, grad_cfg["BV"]))
        _softmax_grad_kernel[g_grid](
            logits, dlogits, lse, y_c, row_scale[c0 : c0 + rows].float().contiguous(),
            rows, V, logits.stride(0), dlogits.stride(0), smoothing, **grad_cfg,
        )
        dl = dlogits[:rows]
        torch.mm(dl, weight, out=dh[c0 : c0 + rows])
        dw.addmm_(dl.T, h_c)
        if db is not None:
            db += dl.float().sum(dim=0)
    return losses, dh, dw, db
