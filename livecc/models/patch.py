"""``livecc.patch(model)``: switch a loaded Qwen2-VL / Qwen2.5-VL model to livecc's kernels.

One call, as Liger's ``apply_liger_kernel_to_*``: the LLM and ViT attention run on livecc's varlen
kernel (packed documents, no padding), a forward given ``labels`` computes the loss on labelled
rows only (no full-vocabulary logits), and on CUDA the rotary embedding of q and k runs as one
fused kernel (``livecc.kernels.rotary_qk``) and, with ``liger-kernel`` installed, RMSNorm and
SwiGLU run fused.
"""

from __future__ import annotations

import importlib.util
import logging
import sys
import types

import torch
from transformers.modeling_outputs import CausalLMOutputWithPast

from ..kernels import rotary_qk
from .attention import use_livecc_attention
from .loss import text_only_causal_lm_loss

__all__ = ["patch", "use_fused_rotary"]

log = logging.getLogger("livecc.models")


def patch(model, *, attention: bool = True, loss: bool = True, fused_ops: bool | None = None):
    """Patch ``model`` in place and return it. ``fused_ops`` (default: the model is on CUDA)
    applies the fused rotary kernel, and Liger's RMSNorm and SwiGLU when ``liger-kernel`` imports."""
    if attention:
        use_livecc_attention(model)
    if loss:
        model.forward = types.MethodType(_text_only_loss_forward(type(model).forward), model)
    if fused_ops is None:
        fused_ops = next(model.parameters()).is_cuda
    if fused_ops:
        use_fused_rotary(model)
        if next(model.parameters()).is_cuda and importlib.util.find_spec("liger_kernel") is not None:
            _use_liger(model)
    return model


def _use_liger(model) -> None:
    """Liger's RMSNorm and SwiGLU (CUDA kernels); a Liger that does not fit this transformers is
    reported and left out."""
    try:
        from liger_kernel.transformers import monkey_patch

        apply = getattr(monkey_patch, f"apply_liger_kernel_to_{model.config.model_type}")
        apply(rope=False, rms_norm=True, swiglu=True, cross_entropy=False, fused_linear_cross_entropy=False,
              layer_norm=False, model=model)
    except (ImportError, AttributeError) as e:
        log.warning("Liger's RMSNorm/SwiGLU left out (%s: %s); the rest of the patch applies", type(e).__name__, e)


def use_fused_rotary(model) -> None:
    """Route the decoder's rotary embedding of q and k through ``rotary_qk``. The decoder calls a
    function of its modeling module, so the module's function is replaced: every model of that
    architecture in the process takes the fused path, which equals Hugging Face's formula (and is
    that formula wherever Triton does not run)."""
    module = sys.modules[type(model).__module__]
    if hasattr(module, "apply_multimodal_rotary_pos_emb"):  # transformers < 5.2x: sections folded per layer
        module.apply_multimodal_rotary_pos_emb = _multimodal_rotary
    elif hasattr(module, "apply_rotary_pos_emb"):
        module.apply_rotary_pos_emb = rotary_qk
    else:
        raise RuntimeError(f"{module.__name__} has no rotary function to replace; fused_ops=False runs unfused")


def _multimodal_rotary(q, k, cos, sin, mrope_section, unsqueeze_dim: int = 1):
    """Older transformers' ``apply_multimodal_rotary_pos_emb``: the M-RoPE sections (t, h, w)
    picked from the three position axes of ``cos``/``sin [3, B, L, D]``, then one fused rotation."""
    pick = lambda x: torch.cat([part[i % 3] for i, part in enumerate(x.split(mrope_section * 2, dim=-1))], dim=-1)
    return rotary_qk(q, k, pick(cos), pick(sin), unsqueeze_dim)


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
