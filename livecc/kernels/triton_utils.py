"""Triton building blocks shared by the kernels: the dot product, one online-softmax step and its result.

Compiled Triton rejects a kernel that reads a module global other than a module, another kernel or
a ``tl.constexpr``, so kernels spell ``log2(e)`` and ``ln(2)`` as literals; ``LOG2E`` and ``LN2``
here are for the Python launchers.
"""

from __future__ import annotations

import triton
import triton.language as tl

__all__ = ["LN2", "LOG2E", "dot", "softmax_result", "softmax_step", "softmax_weights"]

LOG2E = 1.4426950408889634
LN2 = 0.6931471805599453


@triton.jit
def dot(a, b, acc, DOT_FP32: tl.constexpr):
    # Triton's interpreter (3.9) returns garbage from tl.dot on bf16 operands: give it fp32.
    # On GPU the operands stay bf16/fp16 for tensor cores; fp32 inputs use IEEE precision.
    if DOT_FP32:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision="ieee")
    return tl.dot(a, b, acc)


@triton.jit
def softmax_weights(b_s, b_m, b_l):
    """One key block of the online softmax: scores ``b_s [M, N]`` (log2 units, -inf where hidden)
    -> the new row max and sum, the block's weights ``p`` and the factor ``alpha`` that rescales
    the output accumulated so far."""
    m_new = tl.maximum(b_m, tl.max(b_s, axis=1))
    m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # rows with nothing visible yet
    alpha = tl.exp2(b_m - m_safe)
    b_p = tl.exp2(b_s - m_safe[:, None])
    return m_new, b_l * alpha + tl.sum(b_p, axis=1), b_p, alpha


@triton.jit
def softmax_step(b_s, b_v, b_m, b_l, b_acc, DOT_FP32: tl.constexpr):
    """:func:`softmax_weights`, then values ``b_v [N, D]`` into the output accumulator."""
    m_new, l_new, b_p, alpha = softmax_weights(b_s, b_m, b_l)
    return m_new, l_new, dot(b_p.to(b_v.dtype), b_v, b_acc * alpha[:, None], DOT_FP32)


@triton.jit
def softmax_result(b_m, b_l, b_acc):
    """Normalised output and log2-sum-exp (output 0 and -inf for a row that saw no key)."""
    empty = b_l == 0.0
    b_l = tl.where(empty, 1.0, b_l)
    return b_acc / b_l[:, None], tl.where(empty, float("-inf"), b_m + tl.log2(b_l))
