"""Fused linear cross-entropy over the rows that have a target (text tokens only).

In a LiveCC pack over 90% of positions are vision or prompt tokens without a label; the LM head
and the loss run on the labelled rows only. Finding them (``nonzero``) sizes the work, so it reads
the device once per call unless the caller passes ``rows`` found where the labels were made (the
trainer: on the host). For ``mean`` and ``sum`` the whole gradient is made in
the forward (the logits buffer becomes ``d(loss)/d(logits)``, then one GEMM each for dX and dW,
so dW is written once) and the backward only scales it by the incoming gradient; ``none`` keeps a
recompute path, since its per-row gradients are known only in the backward. The logits buffer is
chunked past ``max_logit_bytes`` (default 256 MiB), dW then accumulating in place; what the loss
holds beyond its inputs and the gradients it returns is bounded by :func:`working_bytes` (at the
7B's head under 0.5 GB whatever the share of text, where holding every row's logits took 2.2 GB on
a 16k pack at 5% text).

Both passes are ``torch.library`` custom ops (the labelled-row count is a data-dependent size for
their fake implementations). Where Triton does not run, the torch reference serves.
"""

from __future__ import annotations

import torch

from ..dispatch import check_devices, use_triton
from .reference import text_only_linear_cross_entropy_reference

__all__ = ["text_only_linear_cross_entropy", "text_only_linear_cross_entropy_reference", "working_bytes"]

_REDUCTIONS = ("mean", "sum", "none")
MAX_LOGIT_BYTES = 2**28  # logit GEMMs of ~880 rows at the 7B's head: large enough to run at full rate


def working_bytes(n: int, rows: int, hidden_size: int, vocab: int, element_size: int,
                  max_logit_bytes: int = MAX_LOGIT_BYTES) -> int:
    """The most a call on ``n`` rows (``rows`` of them labelled) holds beyond its inputs and the
    gradients it returns (d_hidden, dW, db), by construction: the logits buffer of one chunk, the
    labelled rows of the hidden states (gathered unless every row is labelled) and their gradient,
    and per labelled row its index, label, loss and scale."""
    step = max(1, min(rows, max_logit_bytes // (vocab * element_size)))
    gathered = 0 if rows == n else rows * hidden_size * element_size
    return step * vocab * element_size + gathered + rows * hidden_size * element_size + rows * (8 + 8 + 4 + 4)


def _chunks(hidden, weight, bias, labels, smoothing, row_scale, max_logit_bytes, want_grad):
    """Losses of the labelled ``hidden [R, H]`` rows and, with ``want_grad``, the gradients
    ``(dh [R, H], dW [V, H], db [V] fp32)`` of ``sum(row_scale * loss)``, in chunks of rows whose
    logits fit ``max_logit_bytes``."""
    from .triton import text_only_linear_cross_entropy_fwd

    rows, vocab = hidden.shape[0], weight.shape[0]
    step = max(1, min(rows, max_logit_bytes // (vocab * hidden.element_size())))
    logits = hidden.new_empty((step, vocab))
    losses = torch.empty(rows, dtype=torch.float32, device=hidden.device)
    dh = torch.empty_like(hidden) if want_grad else hidden.new_empty(0)
    dw = torch.zeros_like(weight) if want_grad and step < rows else weight.new_empty(0)
    db = torch.zeros(vocab, dtype=torch.float32, device=hidden.device) if want_grad and bias is not None \
        else hidden.new_empty(0, dtype=torch.float32)
    for r0 in range(0, rows, step):
        h_c = hidden[r0 : r0 + step]
        z = logits[: h_c.shape[0]]
        torch.mm(h_c, weight.T, out=z)
        if bias is not None:
            z += bias
        scale = row_scale[r0 : r0 + step] if want_grad else None
        losses[r0 : r0 + step] = text_only_linear_cross_entropy_fwd(z, labels[r0 : r0 + step], smoothing, scale)
        if want_grad:  # z now holds scale * dloss/dlogits
            torch.mm(z, weight, out=dh[r0 : r0 + step])
            if step == rows:
                dw = z.T @ h_c  # one chunk: dW written once
            else:
                dw.addmm_(z.T, h_c)
            if bias is not None:
                db += z.float().sum(0)
    return losses, dh, dw, db


@torch.library.custom_op("livecc::text_only_linear_cross_entropy_fwd", mutates_args=())
def _fwd(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, labels: torch.Tensor,
         rows: torch.Tensor | None, ignore_index: int, reduction: str, smoothing: float, max_logit_bytes: int,
         with_grad: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(loss, keep [R], dh [R, H], dW [V, H], db [V])``; the gradients (of the reduced loss, for
    a unit incoming gradient) are empty unless ``with_grad`` and the reduction is mean or sum."""
    # an op's output may not alias its input: the given rows are copied (R indices)
    keep = rows.clone() if rows is not None else (labels != ignore_index).nonzero().flatten()  # a read of the device
    rows = keep.numel()
    scale = 1.0 / max(rows, 1) if reduction == "mean" else 1.0
    eager = with_grad and reduction != "none" and rows > 0
    row_scale = torch.full((rows,), scale, device=hidden.device) if eager else None
    every = rows == labels.numel()  # nothing to gather (SFT's text-only packs)
    losses, dh, dw, db = _chunks(hidden if every else hidden.index_select(0, keep), weight, bias,
                                 labels if every else labels.index_select(0, keep), smoothing, row_scale,
                                 max_logit_bytes, eager)
    if reduction == "none":
        loss = torch.zeros(labels.shape, device=hidden.device, dtype=torch.float32).index_copy_(0, keep, losses)
    else:
        loss = losses.sum() * scale
    return loss, keep, dh, dw, db


@_fwd.register_fake
def _(hidden, weight, bias, labels, rows, ignore_index, reduction, smoothing, max_logit_bytes, with_grad):
    rows = rows.shape[0] if rows is not None else torch.library.get_ctx().new_dynamic_size()
    eager = with_grad and reduction != "none"
    loss = hidden.new_empty(labels.shape if reduction == "none" else (), dtype=torch.float32)
    dh = hidden.new_empty((rows, hidden.shape[1]) if eager else (0,))
    dw = weight.new_empty(weight.shape if eager else (0,))
    db = hidden.new_empty((weight.shape[0],) if eager and bias is not None else (0,), dtype=torch.float32)
    return loss, labels.new_empty(rows), dh, dw, db


@torch.library.custom_op("livecc::text_only_linear_cross_entropy_bwd", mutates_args=())
def _bwd(grad_rows: torch.Tensor, hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
         labels: torch.Tensor, keep: torch.Tensor, smoothing: float,
         max_logit_bytes: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The recompute path of ``reduction="none"``: gradients of ``sum(grad_rows * loss)``."""
    _, dh, dw, db = _chunks(hidden.index_select(0, keep), weight, bias, labels.index_select(0, keep), smoothing,
                            grad_rows.index_select(0, keep).float(), max_logit_bytes, True)
    return dh, dw, db


@_bwd.register_fake
def _(grad_rows, hidden, weight, bias, labels, keep, smoothing, max_logit_bytes):
    db = hidden.new_empty((weight.shape[0],) if bias is not None else (0,), dtype=torch.float32)
    return hidden.new_empty((keep.shape[0], hidden.shape[1])), torch.empty_like(weight), db


def _setup_context(ctx, inputs, output):
    hidden, weight, bias, labels, _, ignore_index, reduction, smoothing, max_logit_bytes, with_grad = inputs
    _, keep, dh, dw, db = output
    ctx.save_for_backward(hidden, weight, bias, labels, keep, dh, dw, db)
    ctx.config = (reduction, smoothing, max_logit_bytes)
    ctx.spent = False


def _backward(ctx, grad_loss, *_):
    hidden, weight, bias, labels, keep, dh, dw, db = ctx.saved_tensors
    reduction, smoothing, max_logit_bytes = ctx.config
    if keep.numel() == 0:
        return (torch.zeros_like(hidden), torch.zeros_like(weight), None if bias is None else torch.zeros_like(bias),
                None, None, None, None, None, None, None)
    if reduction == "none":
        dh, dw, db = _bwd(grad_loss, hidden, weight, bias, labels, keep, smoothing, max_logit_bytes)
    else:
        if ctx.spent:  # the gradients made in the forward are scaled in place, once
            raise RuntimeError("text_only_linear_cross_entropy: backward through the same loss twice is not supported")
        ctx.spent = True
        g = grad_loss.to(torch.float32)
        dh, dw, db = dh.mul_(g.to(dh.dtype)), dw.mul_(g.to(dw.dtype)), db.mul_(g)
    d_hidden = dh if keep.numel() == hidden.shape[0] else torch.zeros_like(hidden).index_copy_(0, keep, dh)
    d_bias = None if bias is None else db.to(bias.dtype)
    return d_hidden, dw, d_bias, None, None, None, None, None, None, None


_fwd.register_autograd(_backward, setup_context=_setup_context)


def text_only_linear_cross_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    bias: torch.Tensor | None = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    max_logit_bytes: int = MAX_LOGIT_BYTES,
    rows: torch.Tensor | None = None,
) -> torch.Tensor:
    """Cross-entropy of ``hidden [N, H] @ weight[V, H].T (+ bias)`` against ``labels [N]``, computed
    on labelled rows only. ``mean`` divides by the number of labelled rows (0 when there are none).
    The loss is fp32; the logits are held in the input dtype, ``max_logit_bytes`` at a time.
    ``rows``: the indices of the labelled rows (``labels != ignore_index``, int64, ascending), where
    the caller knows them without reading the device."""
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")
    if hidden.ndim != 2 or weight.ndim != 2 or labels.shape != hidden.shape[:1] or hidden.shape[1] != weight.shape[1]:
        raise ValueError(f"expected hidden [N, H], weight [V, H], labels [N]; got {tuple(hidden.shape)}, "
                         f"{tuple(weight.shape)}, {tuple(labels.shape)}")
    if rows is not None and (rows.ndim != 1 or rows.dtype != torch.int64):
        raise ValueError(f"rows must be a 1-D int64 tensor of row indices; got {tuple(rows.shape)} {rows.dtype}")
    check_devices("text_only_linear_cross_entropy", hidden=hidden, weight=weight, labels=labels, bias=bias,
                  rows=rows)
    if not use_triton(hidden):
        return text_only_linear_cross_entropy_reference(
            hidden, weight, labels, bias, ignore_index, reduction, label_smoothing)
    with_grad = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (hidden, weight, bias))
    return _fwd(hidden, weight, bias, labels, rows, ignore_index, reduction, float(label_smoothing),
                int(max_logit_bytes), with_grad)[0]
