"""Rotary position embedding of a layer's queries and keys, fused: ``rotary_qk(q, k, cos, sin)``
equals Hugging Face's ``apply_rotary_pos_emb`` (which Qwen2-VL's decoder calls with its M-RoPE
sections already folded into ``cos``/``sin``). A ``torch.library`` custom op with its backward;
the torch reference serves where Triton does not run. ``cos``/``sin`` take no gradient: they come
from positions."""

from __future__ import annotations

import torch

from ..dispatch import check_devices, use_triton
from .reference import rotary_qk_reference

__all__ = ["rotary_qk", "rotary_qk_reference"]


@torch.library.custom_op("livecc::rotary_qk", mutates_args=())
def _rotary(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
            inverse: bool) -> tuple[torch.Tensor, torch.Tensor]:
    from .triton import rotary_qk_fwd

    return rotary_qk_fwd(q, k, cos, sin, inverse)


@_rotary.register_fake
def _(q, k, cos, sin, inverse):
    like = lambda x: x.new_empty((x.shape[0], x.shape[2], x.shape[1], x.shape[3])).transpose(1, 2)
    return like(q), like(k)


def _setup(ctx, inputs, output):
    ctx.save_for_backward(inputs[2], inputs[3])
    ctx.inverse = inputs[4]


def _backward(ctx, dq, dk):
    cos, sin = ctx.saved_tensors
    dq, dk = _rotary(dq, dk, cos, sin, not ctx.inverse)
    return dq, dk, None, None, None


_rotary.register_autograd(_backward, setup_context=_setup)


def rotary_qk(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
              unsqueeze_dim: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotated ``q [B, Hq, L, D]`` and ``k [B, Hk, L, D]`` by ``cos``/``sin`` ``[B, L, D]``
    (``unsqueeze_dim`` as Hugging Face's: the heads-before-length layout, 1, is the fused one)."""
    fused = unsqueeze_dim == 1 and q.ndim == 4 and q.shape[-1] % 2 == 0 and q.dtype != torch.float64
    if not (fused and use_triton(q)):
        return rotary_qk_reference(q, k, cos, sin, unsqueeze_dim)
    check_devices("rotary_qk", q=q, k=k, cos=cos, sin=sin)
    return _rotary(q, k, cos, sin, False)
