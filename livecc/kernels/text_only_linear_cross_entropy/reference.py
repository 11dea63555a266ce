"""Pure-torch text-only linear cross-entropy: the oracle and the CPU path."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..dispatch import reference

__all__ = ["text_only_linear_cross_entropy_reference"]


@reference
def text_only_linear_cross_entropy_reference(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    bias: torch.Tensor | None = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    """Cross-entropy of ``hidden @ weight.T (+ bias)`` against ``labels`` on labelled rows only,
    with logits in fp32 (or the input's dtype when wider). Same semantics as ``F.cross_entropy``,
    except that ``mean`` over no labelled row is 0, not NaN."""
    keep = labels != ignore_index
    compute = torch.promote_types(hidden.dtype, torch.float32)
    logits = hidden[keep].to(compute) @ weight.to(compute).T
    if bias is not None:
        logits = logits + bias.to(compute)
    rows = F.cross_entropy(logits, labels[keep], reduction="none", label_smoothing=label_smoothing)
    if reduction == "none":
        return torch.zeros(labels.shape, dtype=rows.dtype, device=rows.device).masked_scatter(keep, rows)
    if reduction == "sum":
        return rows.sum()
    if reduction == "mean":
        return rows.sum() / keep.sum().clamp(min=1)
    raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
