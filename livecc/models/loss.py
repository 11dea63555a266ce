"""Qwen2-VL forward passes that run the LM head on labelled (text) positions only."""

from __future__ import annotations

import sys

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
                ignore_index: int = -100, rows: torch.Tensor | None = None) -> torch.Tensor:
        return text_only_linear_cross_entropy(hidden, self.lm_head.weight, targets, self.lm_head.bias,
                                              ignore_index=ignore_index, reduction=reduction, rows=rows)


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
    (``position_ids``, ``pixel_values_videos``, ``video_grid_thw``, ...) go to the decoder. A
    mixture-of-experts model whose config asks for its router's logits (Qwen3-VL-MoE's
    ``output_router_logits``) adds its load-balancing loss times ``router_aux_loss_coef``, as its own
    forward does, to the mean (once per labelled token to a sum, so that a step's mean is it).
    """
    text = getattr(model.config, "text_config", model.config)
    router = {"output_router_logits": True} if getattr(text, "output_router_logits", False) else {}
    out = model.model(input_ids=input_ids, use_cache=False, **router, **model_inputs)
    hidden = out.last_hidden_state[..., :-1, :]
    targets = labels[..., 1:].reshape(-1)
    # the labelled rows found where the labels are (the trainer's: on the host, no read of the device)
    rows = (targets != ignore_index).nonzero().flatten()
    rows, targets = (_to(t, hidden.device) for t in (rows, targets))
    head = head if head is not None else TextOnlyHead(model.lm_head)
    loss = head(hidden.reshape(-1, hidden.shape[-1]), targets, reduction, ignore_index, rows)
    if router:  # the family's own load-balancing loss, as its forward computes it
        balance = sys.modules[type(model).__module__].load_balancing_loss_func
        aux = text.router_aux_loss_coef * balance(out.router_logits, text.num_experts, text.num_experts_per_tok)
        labelled = targets != ignore_index
        loss = loss + {"mean": aux, "sum": aux * labelled.sum(), "none": aux * labelled}[reduction]
    return loss


def _to(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``t`` on ``device``; from the host to a GPU through pinned memory, without waiting."""
    if t.device == device:
        return t
    return (t.pin_memory() if device.type == "cuda" else t).to(device, non_blocking=True)
