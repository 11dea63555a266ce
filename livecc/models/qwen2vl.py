"""Qwen2-VL forward passes that run the LM head on labelled (text) positions only."""

from __future__ import annotations

import torch

from ..kernels.cross_entropy import text_only_linear_cross_entropy

__all__ = ["text_only_causal_lm_loss"]


def text_only_causal_lm_loss(
    model,
    input_ids: torch.Tensor,
    labels: torch.Tensor,
    *,
    reduction: str = "mean",
    ignore_index: int = -100,
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
    head = model.lm_head
    return text_only_linear_cross_entropy(
        hidden.reshape(-1, hidden.shape[-1]), head.weight, targets.reshape(-1), head.bias,
        ignore_index=ignore_index, reduction=reduction,
    )
