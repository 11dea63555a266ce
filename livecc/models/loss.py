"""Qwen2-VL forward passes that run the LM head on labelled (text) positions only."""

from __future__ import annotations

import torch

from ..kernels import text_only_linear_cross_entropy

__all__ = ["TextOnlyHead", "text_only_causal_lm_loss"]


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
