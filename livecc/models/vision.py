"""The ViT and the input embeddings it fills, without reading the device.

Everything a Qwen-VL ViT derives from the frames' grids (rotary position ids, the frames' and
Qwen2.5-VL's windows' attention offsets and longest lengths, its window order, Qwen3-VL's
interpolation of the learned position grid) is computed on the host from grids the host holds, by
Hugging Face's own functions (``transformers.vision_utils``), and handed to the ViT's forward,
which takes them precomputed: the forward launches kernels only. Hugging Face's own forward
derives them from the grids on the device and reads them back (four reads a ViT call), and checks
the visual rows against the placeholder tokens by reading their counts.
"""

from __future__ import annotations

import sys
import types

import torch
from transformers.modeling_outputs import MultimodalBaseModelOutputWithPast
from transformers.models.qwen3_vl.modeling_qwen3_vl import Qwen3VLTextModel
from transformers.models.qwen3_vl_moe.modeling_qwen3_vl_moe import Qwen3VLMoeTextModel
from transformers.vision_utils import (
    get_vision_cu_seqlens,
    get_vision_interpolation_indices_and_weights,
    get_vision_position_ids,
    get_vision_window_index,
)

__all__ = ["Grid", "multimodal_embeds", "run_vision", "use_host_vision", "vision_geometry"]

Grid = tuple[int, int, int]


def vision_geometry(visual, grids: list[Grid], device) -> dict:
    """The keyword arguments that give ``visual``'s forward every grid-derived tensor of ``grids``
    precomputed (on ``device``), and the longest attention lengths as Python ints."""
    grid = torch.tensor(grids, dtype=torch.long)
    merge = visual.spatial_merge_size
    cu = get_vision_cu_seqlens(grid)
    geometry = {"position_ids": get_vision_position_ids(grid, merge), "cu_seqlens": cu,
                "max_seqlen": _longest(cu)}
    if hasattr(visual, "window_size"):  # Qwen2.5-VL: windowed attention in most blocks
        index, cu_windows = get_vision_window_index(grid, merge, visual.window_size, visual.patch_size)
        geometry.update(window_index=index, cu_window_seqlens=cu_windows, max_window_seqlen=_longest(cu_windows))
    if hasattr(visual, "pos_embed"):  # Qwen3-VL: the learned position grid resampled to each frame's
        indices, weights = get_vision_interpolation_indices_and_weights(
            grid, visual.num_grid_per_side, mode=visual.interpolation_mode,
            align_corners=visual.interpolation_align_corners, spatial_merge_size=merge)
        geometry.update(interp_indices=indices, interp_weights=weights)
    return {"grid_thw": grid.to(device),
            **{k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in geometry.items()}}


def _longest(cu: torch.Tensor) -> int:
    return int((cu[1:] - cu[:-1]).max()) if cu.numel() > 1 else 0


def run_vision(visual, pixel_values: torch.Tensor, geometry: dict) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """The ViT's forward over ``pixel_values`` with precomputed ``geometry`` -> (merged embeddings,
    DeepStack features: one per LLM layer they are added after, or none)."""
    args = dict(geometry)  # the forward pops what it takes
    out = visual(pixel_values, **args)
    if isinstance(out, tuple):  # transformers that return (embeddings, DeepStack features)
        embeds, deep = out
    else:
        embeds, deep = getattr(out, "pooler_output", out), getattr(out, "deepstack_features", None)
    return embeds, list(deep or [])


def multimodal_embeds(inner, input_ids: torch.Tensor, *, pixel_values: torch.Tensor | None = None,
                      image_grid_thw: torch.Tensor | None = None, pixel_values_videos: torch.Tensor | None = None,
                      video_grid_thw: torch.Tensor | None = None) -> tuple[torch.Tensor, list[torch.Tensor] | None]:
    """``(inputs_embeds [B, T, H], DeepStack)`` of a Qwen-VL model's inner model (``model.model``):
    the token embeddings with the ViT's rows in the image and video placeholders, in sequence order
    (images, then videos, as Hugging Face fills them), and for Qwen3-VL one dense ``[B, T, H]``
    tensor per DeepStack layer (the ViT's features at the visual rows, zeros elsewhere; else
    None). The grids are read where they are: from the host, nothing is read back from the device."""
    embeds = inner.get_input_embeddings()(input_ids)
    visual, deep = inner.visual, None
    for pixels, grid, token in ((pixel_values, image_grid_thw, inner.config.image_token_id),
                                (pixel_values_videos, video_grid_thw, inner.config.video_token_id)):
        if pixels is None:
            continue
        geometry = vision_geometry(visual, [tuple(g) for g in grid.tolist()], embeds.device)
        rows, features = run_vision(visual, pixels.type(visual.dtype), geometry)
        at = (input_ids == token)[..., None].expand_as(embeds)
        embeds = embeds.masked_scatter(at, rows.to(embeds.dtype))
        if features:
            dense = [torch.zeros_like(embeds).masked_scatter(at, f.to(embeds.dtype)) for f in features]
            deep = dense if deep is None else [a + b for a, b in zip(deep, dense)]
    return embeds, deep


_VISION = ("pixel_values", "image_grid_thw", "pixel_values_videos", "video_grid_thw")
_HF_ONLY = ("mm_encoder_outputs", "mm_token_type_ids", "second_per_grid_ts")


def use_host_vision(model) -> None:
    """A packed row's forward (``position_ids`` given, no padding mask) through the inner model
    (``model.model``, so that what wraps it, FSDP's unit say, still does) builds its input embeddings
    with :func:`multimodal_embeds` and runs the language model on them; any other call is Hugging
    Face's own forward."""
    inner = model.model
    original = type(inner).forward
    # the class Hugging Face's forward returns (a mixture of experts' carries its router logits too)
    family = type(inner).__name__.removesuffix("Model")
    output_class = getattr(sys.modules[type(inner).__module__], f"{family}BaseModelOutputWithPast",
                           MultimodalBaseModelOutputWithPast)

    def forward(self, input_ids=None, position_ids=None, inputs_embeds=None, cache=None, **kwargs):
        vision = {k: v for k in _VISION if (v := kwargs.pop(k, None)) is not None}
        # what only Hugging Face's own forward takes: encoder outputs given, what positions derive from
        own = {k: v for k in _HF_ONLY if (v := kwargs.pop(k, None)) is not None}
        if (not vision or own or input_ids is None or position_ids is None or inputs_embeds is not None
                or cache is not None or kwargs.get("attention_mask") is not None):
            return original(self, input_ids=input_ids, position_ids=position_ids, inputs_embeds=inputs_embeds,
                            cache=cache, **vision, **own, **kwargs)
        kwargs.pop("attention_mask", None)
        embeds, deep = multimodal_embeds(self, input_ids, **vision)
        stack = {} if deep is None else {"visual_pos_masks": None, "deepstack_visual_embeds": deep}
        out = self.language_model(input_ids=None, position_ids=position_ids, inputs_embeds=embeds, **stack, **kwargs)
        return output_class(**out, image_outputs=None, video_outputs=None)

    inner.forward = types.MethodType(forward, inner)


def _dense_deepstack(process):
    """Qwen3-VL's DeepStack step, also taking dense features (``visual_pos_masks`` None): added to
    every row, zeros off the visual rows, so no boolean mask indexes (and reads) the device."""

    def dense_or_masked(self, hidden_states, visual_pos_masks, visual_embeds):
        if visual_pos_masks is None:
            return hidden_states + visual_embeds.to(hidden_states.dtype)
        return process(self, hidden_states, visual_pos_masks, visual_embeds)

    return dense_or_masked


for _text_model in (Qwen3VLTextModel, Qwen3VLMoeTextModel):
    _text_model._deepstack_process = _dense_deepstack(_text_model._deepstack_process)

