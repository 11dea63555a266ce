"""One question about a video, answered by the next-token logits (multiple choice, yes/no)."""

from __future__ import annotations

import torch

from ..kernels import preprocess_frames
from .rope import mrope_position_ids
from .tokens import TokenIds
from .turns import SYSTEM_TURN, tokenize_with_video
from .video_format import VideoFormat
from .vision import VisionSpec

__all__ = ["video_prompt_logits"]


@torch.no_grad()
def video_prompt_logits(model, processor, frames: torch.Tensor, size: tuple[int, int], prompt: str,
                        answer_prefix: str = "") -> torch.Tensor:
    """Logits of the token after ``<video>prompt`` and the assistant's ``answer_prefix``, for uint8
    frames ``[T, H, W, 3]`` resized to ``size``."""
    tokenizer = getattr(processor, "tokenizer", processor)
    token_ids, spec = TokenIds.from_tokenizer(tokenizer), VisionSpec.from_processor(processor)
    device = next(model.parameters()).device
    pixels, grid = preprocess_frames(frames.to(device), size, spec)
    video = VideoFormat.of(model.config, spec.temporal_patch_size)
    text = (SYSTEM_TURN + f"<|im_start|>user\n{video.block(len(frames))}{prompt}<|im_end|>\n"
            f"<|im_start|>assistant\n{answer_prefix}")
    blocks = video.llm_grids(grid)
    ids = tokenize_with_video(tokenizer, text, token_ids.video_pad, blocks, spec.merge_size)
    positions, _ = mrope_position_ids(ids, blocks, (token_ids.video_pad,), spec.merge_size,
                                      time_interval=video.time_interval)
    return model(input_ids=ids[None].to(device), position_ids=positions[:, None].to(device),
                 pixel_values_videos=pixels.to(model.dtype), video_grid_thw=grid.to(device)).logits[0, -1]
