"""Triton varlen flash attention (forward and backward) for packed frame-word sequences.

One program per (block of queries | block of keys, sequence, head); sequences come from
``cu_seqlens`` so a pack of documents never attends across a boundary and no padding is computed.
Causal masks are aligned bottom-right, so a new streaming window attends to its KV cache. GQA
reads each KV head once per query head of its group; the backward reduces dK/dV over the group
inside one program (no atomics). Head dims that are not a power of two (the ViT's 80) are padded
to the next one in registers only.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..dispatch import interpreting
from ..triton_utils import LOG2E, dot, softmax_result, softmax_step

__all__ = ["varlen_attention_bwd", "varlen_attention_fwd"]

@triton.jit
def _span(CU, i_b):
    """Start (int64) and length (int32) of sequence ``i_b`` from cumulative offsets."""
    start = tl.load(CU + i_b).to(tl.int64)
    return start, (tl.load(CU + i_b + 1) - start).to(tl.int32)


@triton.jit
def _rows(P, start, o_t, stride_t, i_h, stride_h, o_d, m_t, m_d):
    """Block ``[len(o_t), BD]`` of head ``i_h`` at rows ``start + o_t``, zero outside the masks."""
    return tl.load(P + (start + o_t)[:, None] * stride_t + i_h * stride_h + o_d[None, :],
                   mask=m_t[:, None] & m_d[None, :], other=0.0)


@triton.jit
def _cols(P, start, o_t, stride_t, i_h, stride_h, o_d, m_t, m_d):
    """The transposed block ``[BD, len(o_t)]``."""
    return tl.load(P + (start + o_t)[None, :] * stride_t + i_h * stride_h + o_d[:, None],
                   mask=m_t[None, :] & m_d[:, None], other=0.0)


@triton.jit
def _visible(o_m, o_n, m_m, m_n, diag, CAUSAL: tl.constexpr):
    """``[BM, BN]``: query ``i`` sees key ``j`` (both in range; causal: ``j <= i + diag``)."""
    visible = m_m[:, None] & m_n[None, :]
    if CAUSAL:
        visible = visible & (o_n[None, :] <= o_m[:, None] + diag)
    return visible


@triton.jit
def _store_rows(P, x, start, o_t, stride_t, i_h, stride_h, o_d, m_t, m_d):
    tl.store(P + (start + o_t)[:, None] * stride_t + i_h * stride_h + o_d[None, :], x.to(P.dtype.element_ty),
             mask=m_t[:, None] & m_d[None, :])


@triton.jit
def _key_end(k_len, q_len, i_m, BM: tl.constexpr, CAUSAL: tl.constexpr):
    """Keys a query block can see: all, or (causal, bottom-right) up to its last query's diagonal."""
    if CAUSAL:
        return tl.minimum(k_len, (i_m + 1) * BM + k_len - q_len)
    return k_len


@triton.jit
def _row_stats(LSE, DELTA, i_h, total_q, q_start, o_m, m_m):
    """A query block's log-sum-exp (in log2 units, for exp2) and ``delta = rowsum(dO * O)``."""
    b_lse = tl.load(LSE + i_h * total_q + q_start + o_m, mask=m_m, other=0.0) * 1.4426950408889634
    b_delta = tl.load(DELTA + i_h * total_q + q_start + o_m, mask=m_m, other=0.0)
    return b_lse, b_delta


@triton.jit
def _fwd_kernel(
    Q, K, V, O, LSE, CU_Q, CU_K, scale_log2,
    stride_qt, stride_qh, stride_kt, stride_kh, stride_vt, stride_vh, stride_ot, stride_oh, total_q,
    GROUP: tl.constexpr, D: tl.constexpr, CAUSAL: tl.constexpr, DOT_FP32: tl.constexpr,
    BM: tl.constexpr, BN: tl.constexpr, BD: tl.constexpr,
):
    i_m, i_b, i_h = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    q_start, q_len = _span(CU_Q, i_b)
    if i_m * BM >= q_len:
        return
    k_start, k_len = _span(CU_K, i_b)
    i_kh = i_h // GROUP
    o_m = i_m * BM + tl.arange(0, BM)
    o_d = tl.arange(0, BD)
    m_m, m_d = o_m < q_len, o_d < D
    b_q = _rows(Q, q_start, o_m, stride_qt, i_h, stride_qh, o_d, m_m, m_d)
    diag = k_len - q_len  # key j is visible to query i iff j <= i + diag (causal)
    hi = _key_end(k_len, q_len, i_m, BM, CAUSAL)
    b_m = tl.full([BM], float("-inf"), dtype=tl.float32)
    b_l = tl.zeros([BM], dtype=tl.float32)
    b_acc = tl.zeros([BM, BD], dtype=tl.float32)
    for start_n in range(0, hi, BN):
        o_n = start_n + tl.arange(0, BN)
        m_n = o_n < k_len
        b_kt = _cols(K, k_start, o_n, stride_kt, i_kh, stride_kh, o_d, m_n, m_d)
        b_s = dot(b_q, b_kt, tl.zeros([BM, BN], dtype=tl.float32), DOT_FP32) * scale_log2
        b_s = tl.where(_visible(o_m, o_n, m_m, m_n, diag, CAUSAL), b_s, float("-inf"))
        b_v = _rows(V, k_start, o_n, stride_vt, i_kh, stride_vh, o_d, m_n, m_d)
        b_m, b_l, b_acc = softmax_step(b_s, b_v, b_m, b_l, b_acc, DOT_FP32)
    b_o, b_lse2 = softmax_result(b_m, b_l, b_acc)
    _store_rows(O, b_o, q_start, o_m, stride_ot, i_h, stride_oh, o_d, m_m, m_d)
    tl.store(LSE + i_h * total_q + q_start + o_m, b_lse2 * 0.6931471805599453, mask=m_m)


@triton.jit
def _bwd_dkdv_kernel(
    Q, K, V, DO, LSE, DELTA, DK, DV, CU_Q, CU_K, scale, scale_log2,
    stride_qt, stride_qh, stride_kt, stride_kh, stride_vt, stride_vh, stride_dot, stride_doh,
    stride_dkt, stride_dkh, stride_dvt, stride_dvh, total_q,
    GROUP: tl.constexpr, D: tl.constexpr, CAUSAL: tl.constexpr, DOT_FP32: tl.constexpr,
    BM: tl.constexpr, BN: tl.constexpr, BD: tl.constexpr,
):
    i_n, i_b, i_kh = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    k_start, k_len = _span(CU_K, i_b)
    if i_n * BN >= k_len:
        return
    q_start, q_len = _span(CU_Q, i_b)
    o_n = i_n * BN + tl.arange(0, BN)
    o_d = tl.arange(0, BD)
    m_n, m_d = o_n < k_len, o_d < D
    b_k = _rows(K, k_start, o_n, stride_kt, i_kh, stride_kh, o_d, m_n, m_d)
    b_v = _rows(V, k_start, o_n, stride_vt, i_kh, stride_vh, o_d, m_n, m_d)
    b_dk = tl.zeros([BN, BD], dtype=tl.float32)
    b_dv = tl.zeros([BN, BD], dtype=tl.float32)
    diag = k_len - q_len
    lo = 0
    if CAUSAL:
        lo = tl.maximum(0, i_n * BN - diag) // BM * BM  # first query block that sees this key block
    for g in range(GROUP):
        i_h = i_kh * GROUP + g
        for start_m in range(lo, q_len, BM):
            o_m = start_m + tl.arange(0, BM)
            m_m = o_m < q_len
            b_q = _rows(Q, q_start, o_m, stride_qt, i_h, stride_qh, o_d, m_m, m_d)
            b_do = _rows(DO, q_start, o_m, stride_dot, i_h, stride_doh, o_d, m_m, m_d)
            b_lse, b_delta = _row_stats(LSE, DELTA, i_h, total_q, q_start, o_m, m_m)
            b_s = dot(b_q, tl.trans(b_k), tl.zeros([BM, BN], dtype=tl.float32), DOT_FP32) * scale_log2
            b_p = tl.where(_visible(o_m, o_n, m_m, m_n, diag, CAUSAL), tl.exp2(b_s - b_lse[:, None]), 0.0)
            b_dv = dot(tl.trans(b_p.to(b_do.dtype)), b_do, b_dv, DOT_FP32)
            b_dp = dot(b_do, tl.trans(b_v), tl.zeros([BM, BN], dtype=tl.float32), DOT_FP32)
            b_ds = b_p * (b_dp - b_delta[:, None])
            b_dk = dot(tl.trans(b_ds.to(b_q.dtype)), b_q, b_dk, DOT_FP32)
    _store_rows(DK, b_dk * scale, k_start, o_n, stride_dkt, i_kh, stride_dkh, o_d, m_n, m_d)
    _store_rows(DV, b_dv, k_start, o_n, stride_dvt, i_kh, stride_dvh, o_d, m_n, m_d)


@triton.jit
def _bwd_dq_kernel(
    Q, K, V, DO, LSE, DELTA, DQ, CU_Q, CU_K, scale, scale_log2,
    stride_qt, stride_qh, stride_kt, stride_kh, stride_vt, stride_vh, stride_dot, stride_doh,
    stride_dqt, stride_dqh, total_q,
    GROUP: tl.constexpr, D: tl.constexpr, CAUSAL: tl.constexpr, DOT_FP32: tl.constexpr,
    BM: tl.constexpr, BN: tl.constexpr, BD: tl.constexpr,
):
    i_m, i_b, i_h = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    q_start, q_len = _span(CU_Q, i_b)
    if i_m * BM >= q_len:
        return
    k_start, k_len = _span(CU_K, i_b)
    i_kh = i_h // GROUP
    o_m = i_m * BM + tl.arange(0, BM)
    o_d = tl.arange(0, BD)
    m_m, m_d = o_m < q_len, o_d < D
    b_q = _rows(Q, q_start, o_m, stride_qt, i_h, stride_qh, o_d, m_m, m_d)
    b_do = _rows(DO, q_start, o_m, stride_dot, i_h, stride_doh, o_d, m_m, m_d)
    b_lse, b_delta = _row_stats(LSE, DELTA, i_h, total_q, q_start, o_m, m_m)
    b_dq = tl.zeros([BM, BD], dtype=tl.float32)
    diag = k_len - q_len
    for start_n in range(0, _key_end(k_len, q_len, i_m, BM, CAUSAL), BN):
        o_n = start_n + tl.arange(0, BN)
        m_n = o_n < k_len
        b_kt = _cols(K, k_start, o_n, stride_kt, i_kh, stride_kh, o_d, m_n, m_d)
        b_vt = _cols(V, k_start, o_n, stride_vt, i_kh, stride_vh, o_d, m_n, m_d)
        b_s = dot(b_q, b_kt, tl.zeros([BM, BN], dtype=tl.float32), DOT_FP32) * scale_log2
        b_p = tl.where(_visible(o_m, o_n, m_m, m_n, diag, CAUSAL), tl.exp2(b_s - b_lse[:, None]), 0.0)
        b_dp = dot(b_do, b_vt, tl.zeros([BM, BN], dtype=tl.float32), DOT_FP32)
        b_ds = b_p * (b_dp - b_delta[:, None])
        b_dq = dot(b_ds.to(b_kt.dtype), tl.trans(b_kt), b_dq, DOT_FP32)
    _store_rows(DQ, b_dq * scale, q_start, o_m, stride_dqt, i_h, stride_dqh, o_d, m_m, m_d)


def _config(d: int, phase: str) -> dict:
    """Tile sizes: small in the interpreter (test shapes), MMA-sized on GPU by head dim."""
    if interpreting():
        return dict(BM=16, BN=16)
    if phase == "fwd":
        return dict(BM=128, BN=64, num_warps=8 if d > 64 else 4, num_stages=3)
    return dict(BM=64, BN=64, num_warps=8 if d > 64 else 4, num_stages=2)


def varlen_attention_fwd(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q: int, causal: bool, scale: float):
    """``(out [Tq, Hq, D], lse [Hq, Tq] fp32, natural log)``."""
    total_q, hq, d = q.shape
    out = torch.empty_like(q)
    lse = torch.empty((hq, total_q), device=q.device, dtype=torch.float32)
    cfg = _config(d, "fwd")
    n_seq = cu_seqlens_q.numel() - 1
    if total_q == 0 or n_seq == 0 or max_seqlen_q == 0:
        return out.zero_(), lse.fill_(float("-inf"))
    grid = (triton.cdiv(max_seqlen_q, cfg["BM"]), n_seq, hq)
    _fwd_kernel[grid](
        q, k, v, out, lse, cu_seqlens_q, cu_seqlens_k, scale * LOG2E,
        q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1), out.stride(0), out.stride(1),
        total_q, GROUP=hq // k.shape[1], D=d, CAUSAL=causal, DOT_FP32=interpreting(),
        BD=triton.next_power_of_2(d), **cfg,
    )
    return out, lse


def varlen_attention_bwd(do, q, k, v, out, lse, cu_seqlens_q, cu_seqlens_k, max_seqlen_q: int, max_seqlen_k: int,
                        causal: bool, scale: float):
    """``(dq, dk, dv)`` with dK/dV summed over each KV head's query-head group."""
    total_q, hq, d = q.shape
    hkv = k.shape[1]
    do = do.contiguous() if do.stride(-1) != 1 else do
    delta = (out.float() * do.float()).sum(-1).transpose(0, 1).contiguous()  # [Hq, Tq]
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    n_seq = cu_seqlens_q.numel() - 1
    if n_seq == 0 or total_q == 0 or max_seqlen_k == 0:
        return dq.zero_(), dk.zero_(), dv.zero_()
    cfg = _config(d, "bwd")
    common = dict(GROUP=hq // hkv, D=d, CAUSAL=causal, DOT_FP32=interpreting(), BD=triton.next_power_of_2(d), **cfg)
    strides = (q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1), do.stride(0), do.stride(1))
    _bwd_dkdv_kernel[(triton.cdiv(max_seqlen_k, cfg["BN"]), n_seq, hkv)](
        q, k, v, do, lse, delta, dk, dv, cu_seqlens_q, cu_seqlens_k, scale, scale * LOG2E, *strides,
        dk.stride(0), dk.stride(1), dv.stride(0), dv.stride(1), total_q, **common,
    )
    if max_seqlen_q > 0:
        _bwd_dq_kernel[(triton.cdiv(max_seqlen_q, cfg["BM"]), n_seq, hq)](
            q, k, v, do, lse, delta, dq, cu_seqlens_q, cu_seqlens_k, scale, scale * LOG2E, *strides,
            dq.stride(0), dq.stride(1), total_q, **common,
        )
    return dq, dk, dv
