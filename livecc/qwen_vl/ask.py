"""One question about a video, answered by the next-token logits (multiple choice, yes/no)."""

from __future__ import annotations

import torch

from ..kernels import preprocess_frames
from .tokens import TokenIds
from .turns import VIDEO_BLOCK, chat_text
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
    question = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": prompt}]}]
    text = chat_text(processor, question, add_generation_prompt=True).replace(VIDEO_BLOCK, video.block(len(frames)), 1)
    text += answer_prefix
    ids, positions, _ = video.sequence(tokenizer, token_ids, text, grid)
    return model(input_ids=ids[None].to(device), position_ids=positions[:, None].to(device),
                 pixel_values_videos=pixels.to(model.dtype), video_grid_thw=grid.to(device)).logits[0, -1]
