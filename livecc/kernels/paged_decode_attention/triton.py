"""Triton paged decode attention (flash-decoding): one new query per stream over its KV pages.

A decode step has one query per stream, too little work for a program per (stream, head) to fill
the GPU when the cache is long, so the pages are split into ranges that run in parallel
(``_split_kernel``, partial outputs and log-sum-exps) and are merged by ``_combine_kernel``. A
program takes all query heads of one KV head (GQA), so each page is read once per KV head.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..dispatch import interpreting
from ..triton_utils import LOG2E, dot, softmax_result, softmax_step

__all__ = ["paged_decode_attention_fwd"]


@triton.jit(do_not_specialize=["pages_per_split", "n_splits", "stride_tb"])  # they grow with the cache
def _split_kernel(
    Q, K, V, TABLE, LENS, O_PART, LSE_PART, scale_log2, pages_per_split, n_splits,
    stride_qb, stride_qh, stride_kp, stride_ks, stride_kh, stride_vp, stride_vs, stride_vh, stride_tb,
    HQ: tl.constexpr, GROUP: tl.constexpr, D: tl.constexpr, PAGE: tl.constexpr, DOT_FP32: tl.constexpr,
    BG: tl.constexpr, BD: tl.constexpr,
):
    i_b, i_kh, i_s = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    length = tl.load(LENS + i_b)
    o_g, o_d, o_s = tl.arange(0, BG), tl.arange(0, BD), tl.arange(0, PAGE)
    m_g, m_d = o_g < GROUP, o_d < D
    heads = i_kh * GROUP + o_g
    b_q = tl.load(Q + i_b * stride_qb + heads[:, None] * stride_qh + o_d[None, :],
                  mask=m_g[:, None] & m_d[None, :], other=0.0)
    b_m = tl.full([BG], float("-inf"), dtype=tl.float32)
    b_l = tl.zeros([BG], dtype=tl.float32)
    b_acc = tl.zeros([BG, BD], dtype=tl.float32)
    first = i_s * pages_per_split
    last = tl.minimum(first + pages_per_split, tl.cdiv(length, PAGE))
    for p in range(first, last):
        page = tl.load(TABLE + i_b * stride_tb + p).to(tl.int64)
        m_n = p * PAGE + o_s < length
        b_kt = tl.load(K + page * stride_kp + o_s[None, :] * stride_ks + i_kh * stride_kh + o_d[:, None],
                       mask=m_n[None, :] & m_d[:, None], other=0.0)
        b_s = dot(b_q, b_kt, tl.zeros([BG, PAGE], dtype=tl.float32), DOT_FP32) * scale_log2
        b_s = tl.where(m_n[None, :], b_s, float("-inf"))
        b_v = tl.load(V + page * stride_vp + o_s[:, None] * stride_vs + i_kh * stride_vh + o_d[None, :],
                      mask=m_n[:, None] & m_d[None, :], other=0.0)
        b_m, b_l, b_acc = softmax_step(b_s, b_v, b_m, b_l, b_acc, DOT_FP32)
    b_o, b_lse2 = softmax_result(b_m, b_l, b_acc)  # a split with none of the stream's tokens: 0, -inf
    rows = (i_b * HQ + heads) * n_splits + i_s
    tl.store(O_PART + rows[:, None] * D + o_d[None, :], b_o, mask=m_g[:, None] & m_d[None, :])
    tl.store(LSE_PART + rows, b_lse2, mask=m_g)


@triton.jit(do_not_specialize=["n_splits"])
def _combine_kernel(O_PART, LSE_PART, O, LSE, n_splits, stride_ob, stride_oh,
                    HQ: tl.constexpr, D: tl.constexpr, BS: tl.constexpr, BD: tl.constexpr):
    i_b, i_h = tl.program_id(0), tl.program_id(1)
    o_s, o_d = tl.arange(0, BS), tl.arange(0, BD)
    m_s, m_d = o_s < n_splits, o_d < D
    rows = (i_b * HQ + i_h) * n_splits + o_s
    b_lse = tl.load(LSE_PART + rows, mask=m_s, other=float("-inf"))
    b_max = tl.max(b_lse, axis=0)
    m_safe = tl.where(b_max == float("-inf"), 0.0, b_max)
    b_w = tl.exp2(b_lse - m_safe)
    total = tl.sum(b_w, axis=0)
    empty = total == 0.0  # the stream has no cached token
    total = tl.where(empty, 1.0, total)
    parts = tl.load(O_PART + rows[:, None] * D + o_d[None, :], mask=m_s[:, None] & m_d[None, :], other=0.0)
    b_o = tl.sum(parts * b_w[:, None], axis=0) / total
    tl.store(O + i_b * stride_ob + i_h * stride_oh + o_d, b_o.to(O.dtype.element_ty), mask=m_d)
    tl.store(LSE + i_b * HQ + i_h, tl.where(empty, float("-inf"), (m_safe + tl.log2(total)) * 0.6931471805599453))


def _splits(n_pages: int, programs: int, device: torch.device) -> int:
    """Enough page ranges that the split programs fill the GPU about twice over."""
    if interpreting():
        return min(n_pages, 3)  # small test shapes still cross split boundaries
    sms = torch.cuda.get_device_properties(device).multi_processor_count
    return max(1, min(n_pages, triton.cdiv(2 * sms, programs)))


def paged_decode_attention_fwd(q, k_pages, v_pages, page_table, lengths, max_length: int, scale: float,
                               num_splits: int = 0):
    """``(out [B, Hq, D], lse [B, Hq] fp32, natural log)``; see the reference for the layout.
    ``num_splits`` 0 picks the number of page ranges by GPU."""
    b, hq, d = q.shape
    _, page, hkv, _ = k_pages.shape
    out = torch.empty_like(q)
    lse = torch.empty((b, hq), device=q.device, dtype=torch.float32)
    n_pages = triton.cdiv(max_length, page)
    if b == 0 or n_pages == 0:
        return out.zero_(), lse.fill_(float("-inf"))
    splits = num_splits or _splits(n_pages, b * hkv, q.device)
    per_split = triton.cdiv(n_pages, splits)
    splits = triton.cdiv(n_pages, per_split)
    o_part = torch.empty((b, hq, splits, d), device=q.device, dtype=torch.float32)
    lse_part = torch.empty((b, hq, splits), device=q.device, dtype=torch.float32)
    group = hq // hkv
    bd = triton.next_power_of_2(d)
    _split_kernel[(b, hkv, splits)](
        q, k_pages, v_pages, page_table, lengths, o_part, lse_part, scale * LOG2E, per_split, splits,
        q.stride(0), q.stride(1), k_pages.stride(0), k_pages.stride(1), k_pages.stride(2),
        v_pages.stride(0), v_pages.stride(1), v_pages.stride(2), page_table.stride(0),
        HQ=hq, GROUP=group, D=d, PAGE=page, DOT_FP32=interpreting() or q.dtype == torch.float32,
        BG=max(16, triton.next_power_of_2(group)), BD=bd, num_warps=4, num_stages=2 if q.dtype == torch.float32 else 3,
    )
    _combine_kernel[(b, hq)](o_part, lse_part, out, lse, splits, out.stride(0), out.stride(1),
                             HQ=hq, D=d, BS=triton.next_power_of_2(splits), BD=bd)
    return out, lse
