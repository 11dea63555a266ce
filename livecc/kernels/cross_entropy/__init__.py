"""Fused linear cross-entropy over the rows that have a target (text tokens only).

In a LiveCC pack over 90% of positions are vision or prompt tokens without a label; the LM head
and the loss run on the labelled rows only, and the logits are never materialised beyond a chunk.

One host synchronisation per call: counting the labelled rows (``nonzero``) to size the work.
"""

from __future__ import annotations

import torch

from ..dispatch import use_triton
from .reference import text_only_linear_cross_entropy_reference

__all__ = ["text_only_linear_cross_entropy", "text_only_linear_cross_entropy_reference"]

_REDUCTIONS = ("mean", "sum", "none")


class _TextOnlyLinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, bias, labels, ignore_index, reduction, smoothing, chunk_rows):
        from .triton import linear_cross_entropy_chunks

        keep = (labels != ignore_index).nonzero().flatten()  # the one host sync
        h_sel, y_sel = hidden.index_select(0, keep), labels.index_select(0, keep)
        n = keep.numel()
        scale = 1.0 / max(n, 1) if reduction == "mean" else 1.0
        # For mean/sum the gradient is known up to the scalar grad_output: compute it in this pass
        # (one GEMM fewer than recomputing in backward). 'none' needs per-row grad_output first.
        eager = reduction != "none" and any(ctx.needs_input_grad[:3]) and n > 0
        row_scale = torch.full((n,), scale, device=hidden.device) if eager else None
        losses, dh, dw, db = linear_cross_entropy_chunks(h_sel, weight, y_sel, bias, smoothing, row_scale, chunk_rows)
        ctx.save_for_backward(hidden, weight, bias, labels, keep, dh, dw, db)
        ctx.config = (reduction, smoothing, chunk_rows, eager)
        if reduction == "none":
            out = torch.zeros(labels.shape, device=hidden.device, dtype=torch.float32)
            return out.index_copy_(0, keep, losses)
        total = losses.sum()
        return total * scale if reduction == "mean" else total

    @staticmethod
    def backward(ctx, grad_out):
        from .triton import linear_cross_entropy_chunks

        hidden, weight, bias, labels, keep, dh, dw, db = ctx.saved_tensors
        reduction, smoothing, chunk_rows, eager = ctx.config
        if keep.numel() == 0:
            return (torch.zeros_like(hidden), torch.zeros_like(weight),
                    None if bias is None else torch.zeros_like(bias), None, None, None, None, None)
        if eager:
            g = grad_out.to(torch.float32)
            dh, dw = dh * g.to(dh.dtype), dw * g.to(dw.dtype)
            db = None if db is None else db * g
        else:
            row_scale = grad_out.index_select(0, keep)
            _, dh, dw, db = linear_cross_entropy_chunks(
                hidden.index_select(0, keep), weight, labels.index_select(0, keep), bias, smoothing,
                row_scale, chunk_rows)
        d_hidden = torch.zeros_like(hidden).index_copy_(0, keep, dh)
        d_bias = None if bias is None else db.to(bias.dtype)
        return d_hidden, dw, d_bias, None, None, None, None, None


def text_only_linear_cross_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    bias: torch.Tensor | None = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    chunk_rows: int = 256,
) -> torch.Tensor:
    """Cross-entropy of ``hidden [N, H] @ weight[V, H].T (+ bias)`` against ``labels [N]``, computed
    on labelled rows only. ``mean`` divides by the number of labelled rows (0 when there are none).
    The loss is fp32. ``chunk_rows`` bounds the extra memory to ``chunk_rows x V x 6`` bytes (bf16).
    """
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")
    if hidden.ndim != 2 or weight.ndim != 2 or labels.shape != hidden.shape[:1] or hidden.shape[1] != weight.shape[1]:
        raise ValueError(f"expected hidden [N, H], weight [V, H], labels [N]; got {tuple(hidden.shape)}, "
                         f"{tuple(weight.shape)}, {tuple(labels.shape)}")
    if not use_triton(hidden):
        return text_only_linear_cross_entropy_reference(
            hidden, weight, labels, bias, ignore_index, reduction, label_smoothing)
    return _TextOnlyLinearCrossEntropy.apply(
        hidden, weight, bias, labels, ignore_index, reduction, float(label_smoothing), chunk_rows)
