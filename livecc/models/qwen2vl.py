"""Qwen2-VL forward passes that run the LM head on labelled (text) positions only."""

from __future__ import annotations

import sys
import types

import torch

from ..kernels.attention import varlen_attention
from ..kernels.cross_entropy import text_only_linear_cross_entropy
from .attention import ATTN_IMPLEMENTATION, register

__all__ = ["TextOnlyHead", "text_only_causal_lm_loss", "use_livecc_attention"]


class TextOnlyHead(torch.nn.Module):
    """The LM head applied, with the loss, to labelled rows only. A module of its own so that FSDP
    can shard and gather the head's weight around this call like around any forward."""

    def __init__(self, lm_head: torch.nn.Linear):
        super().__init__()
        self.lm_head = lm_head

    def forward(self, hidden: torch.Tensor, targets: torch.Tensor, reduction: str = "mean",
                ignore_index: int = -100) -> torch.Tensor:
        return text_only_linear_cross_entropy(hidden, self.lm_head.weight, targets, self.lm_head.bias,
                                              ignore_index=ignore_index, reduction=reduction)


def text_only_causal_lm_loss(
    model,
    input_ids: torch.Tensor,
    labels: torch.Tensor,
    *,
    reduction: str = "mean",
    ignore_index: int = -100,
    head: TextOnlyHead | None = None,
    **model_inputs,
) -> torch.Tensor:
    """Next-token loss of a ``Qwen2VLForConditionalGeneration`` without full-vocabulary logits.

    Runs the decoder (``model.model``) for hidden states, shifts labels by one as Hugging Face's
    causal-LM loss does, and applies the LM head only where a target exists. ``model_inputs``
    (``position_ids``, ``pixel_values_videos``, ``video_grid_thw``, ...) go to the decoder.
    """
    out = model.model(input_ids=input_ids, use_cache=False, **model_inputs)
    hidden = out.last_hidden_state[..., :-1, :]
    targets = labels[..., 1:]
    head = head if head is not None else TextOnlyHead(model.lm_head)
    return head(hidden.reshape(-1, hidden.shape[-1]), targets.reshape(-1), reduction, ignore_index)


def _vision_attention_forward(self, hidden_states, cu_seqlens, position_embeddings=None, max_seqlen=None, **kwargs):
    """Qwen2-VL / Qwen2.5-VL ViT attention over every frame group (or window) at once: one varlen
    call, not a loop per group."""
    apply_rotary_pos_emb_vision = sys.modules[type(self).__module__].apply_rotary_pos_emb_vision
    seq_len = hidden_states.shape[0]
    q, k, v = self.qkv(hidden_states).reshape(seq_len, 3, self.num_heads, -1).permute(1, 0, 2, 3).unbind(0)
    cos, sin = position_embeddings
    q, k = apply_rotary_pos_emb_vision(q, k, cos, sin)
    cu = cu_seqlens.to(torch.int32)
    max_len = int(max_seqlen) if max_seqlen is not None else int((cu[1:] - cu[:-1]).max())
    out, _ = varlen_attention(q, k, v, cu, cu, max_len, max_len, causal=False, softmax_scale=self.scaling)
    return self.proj(out.reshape(seq_len, -1))


def use_livecc_attention(model) -> None:
    """Run a Qwen2-VL or Qwen2.5-VL model's LLM and ViT attention on livecc's varlen kernel."""
    from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import Qwen2_5_VLVisionAttention
    from transformers.models.qwen2_vl.modeling_qwen2_vl import VisionAttention

    register()
    model.set_attn_implementation(ATTN_IMPLEMENTATION)
    for module in model.modules():
        if isinstance(module, (VisionAttention, Qwen2_5_VLVisionAttention)):
            module.forward = types.MethodType(_vision_attention_forward, module)
