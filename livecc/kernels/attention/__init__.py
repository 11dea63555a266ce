"""Varlen flash attention for packed sequences: causal (LLM, bottom-right) and not (ViT).

``varlen_attention`` dispatches by device (see ``livecc.kernels.dispatch``). The Triton path is a
``torch.library`` custom op with a fake implementation and a registered autograd formula, so
``torch.compile`` and FSDP see through it.
"""

from __future__ import annotations

import torch

from ..dispatch import use_triton
from .reference import varlen_attention_reference

__all__ = ["varlen_attention", "varlen_attention_reference"]


@torch.library.custom_op("livecc::varlen_attention_fwd", mutates_args=())
def _fwd(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_q: torch.Tensor, cu_k: torch.Tensor,
         max_q: int, max_k: int, causal: bool, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    from .triton import flash_varlen_forward

    return flash_varlen_forward(q, k, v, cu_q, cu_k, max_q, causal, scale)


@_fwd.register_fake
def _(q, k, v, cu_q, cu_k, max_q, max_k, causal, scale):
    return torch.empty_like(q), q.new_empty((q.shape[1], q.shape[0]), dtype=torch.float32)


@torch.library.custom_op("livecc::varlen_attention_bwd", mutates_args=())
def _bwd(do: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor,
         lse: torch.Tensor, cu_q: torch.Tensor, cu_k: torch.Tensor, max_q: int, max_k: int, causal: bool,
         scale: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    from .triton import flash_varlen_backward

    return flash_varlen_backward(do, q, k, v, out, lse, cu_q, cu_k, max_q, max_k, causal, scale)


@_bwd.register_fake
def _(do, q, k, v, out, lse, cu_q, cu_k, max_q, max_k, causal, scale):
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)


def _setup_context(ctx, inputs, output):
    q, k, v, cu_q, cu_k, max_q, max_k, causal, scale = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, out, lse, cu_q, cu_k)
    ctx.config = (max_q, max_k, causal, scale)


def _backward(ctx, grad_out, grad_lse):
    q, k, v, out, lse, cu_q, cu_k = ctx.saved_tensors
    dq, dk, dv = _bwd(grad_out, q, k, v, out, lse, cu_q, cu_k, *ctx.config)
    return dq, dk, dv, None, None, None, None, None, None


_fwd.register_autograd(_backward, setup_context=_setup_context)


def varlen_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_seqlens_q: torch.Tensor,
    cu_seqlens_k: torch.Tensor,
    max_seqlen_q: int,
    max_seqlen_k: int,
    causal: bool = True,
    softmax_scale: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention over packed sequences.

    ``q [Tq, Hq, D]``, ``k/v [Tk, Hkv, D]`` (Hq a multiple of Hkv; D 64, 80 or 128 and any other
    size), ``cu_seqlens_* [B + 1]`` int32 offsets from 0 to the total. Causal masks are aligned
    bottom-right, for queries appended after a KV cache. Returns ``(out [Tq, Hq, D], lse [Hq, Tq])``
    with lse in fp32 natural log (-inf, and output 0, for a query that sees no key).
    """
    scale = q.shape[-1] ** -0.5 if softmax_scale is None else float(softmax_scale)
    if not use_triton(q):
        return varlen_attention_reference(q, k, v, cu_seqlens_q, cu_seqlens_k, causal, scale)
    cu_q, cu_k = cu_seqlens_q.to(torch.int32), cu_seqlens_k.to(torch.int32)
    return _fwd(q, k, v, cu_q, cu_k, int(max_seqlen_q), int(max_seqlen_k), bool(causal), scale)
