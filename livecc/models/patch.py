"""``livecc.patch(model)``: switch a loaded Qwen2-VL / Qwen2.5-VL model to livecc's kernels.

One call, as Liger's ``apply_liger_kernel_to_*``: the LLM and ViT attention run on livecc's varlen
kernel (packed documents, no padding), a forward given ``labels`` computes the loss on labelled
rows only (no full-vocabulary logits), and on CUDA, with ``liger-kernel`` installed, RMSNorm,
SwiGLU and M-RoPE run fused.
"""

from __future__ import annotations

import importlib.util
import types

from transformers.modeling_outputs import CausalLMOutputWithPast

from .attention import use_livecc_attention
from .loss import text_only_causal_lm_loss

__all__ = ["patch"]


def patch(model, *, attention: bool = True, loss: bool = True, fused_ops: bool | None = None):
    """Patch ``model`` in place and return it. ``fused_ops=None`` applies Liger's fused RMSNorm,
    SwiGLU and M-RoPE when the model is on CUDA and ``liger-kernel`` imports."""
    if attention:
        use_livecc_attention(model)
    if loss:
        model.forward = types.MethodType(_text_only_loss_forward(type(model).forward), model)
    if fused_ops is None:
        fused_ops = next(model.parameters()).is_cuda and importlib.util.find_spec("liger_kernel") is not None
    if fused_ops:
        from liger_kernel.transformers import monkey_patch

        apply = getattr(monkey_patch, f"apply_liger_kernel_to_{model.config.model_type}")
        apply(rope=True, rms_norm=True, swiglu=True, cross_entropy=False, fused_linear_cross_entropy=False,
              layer_norm=False, model=model)
    return model


def _text_only_loss_forward(forward):
    """The model's forward, except that given ``labels`` (as a keyword) it returns the loss of the
    labelled rows and no logits."""

    def patched(self, *args, labels=None, **kwargs):
        if labels is None or args:
            return forward(self, *args, labels=labels, **kwargs)
        kwargs.pop("logits_to_keep", None)  # no logits are made
        kwargs.pop("use_cache", None)  # a loss needs no cache
        return CausalLMOutputWithPast(loss=text_only_causal_lm_loss(self, labels=labels, **kwargs))

    return patched
