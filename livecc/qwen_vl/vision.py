"""Qwen2-VL's vision input: patch geometry and normalisation, the resize rule and the pixel budget."""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..kernels import PatchGeometry

__all__ = ["FRAME_FACTOR", "IMAGE_FACTOR", "PixelBudget", "VisionSpec", "clip_frame_size", "smart_resize"]

FRAME_FACTOR = 2  # Qwen2-VL's temporal patch: frames come in pairs
IMAGE_FACTOR = 28  # 14-pixel patches merged 2x2


@dataclass(frozen=True)
class VisionSpec(PatchGeometry):
    """Patch geometry and normalisation of a Qwen2-VL vision tower, as its processor states them."""

    @classmethod
    def from_processor(cls, processor) -> VisionSpec:
        source = getattr(processor, "video_processor", None) or getattr(processor, "image_processor", None)
        if source is None:
            return cls()
        return cls(
            patch_size=int(source.patch_size),
            temporal_patch_size=int(source.temporal_patch_size),
            merge_size=int(source.merge_size),
            mean=tuple(float(x) for x in source.image_mean),
            std=tuple(float(x) for x in source.image_std),
        )


@dataclass(frozen=True)
class PixelBudget:
    """Per-frame and per-clip pixel limits and the frame cap (240 s at 2 FPS) of LiveCC's video input."""

    min_pixels: int = 100 * 28 * 28
    max_pixels: int = 768 * 28 * 28
    total_pixels: int = 24576 * 28 * 28
    max_frames: int = 480

    def frame_max_pixels(self, nframes: int) -> float:
        per_frame = self.total_pixels / max(nframes, 1) * FRAME_FACTOR
        return max(min(self.max_pixels, per_frame), int(self.min_pixels * 1.05))


def smart_resize(height: int, width: int, factor: int = IMAGE_FACTOR, min_pixels: float = 100 * 28 * 28,
                 max_pixels: float = 768 * 28 * 28) -> tuple[int, int]:
    """Qwen2-VL's resize rule: both sides multiples of ``factor``, area within the bounds, aspect kept."""
    if min(height, width) <= 0:
        raise ValueError(f"frame size must be positive, got {height}x{width}")
    if max(height, width) / min(height, width) > 200:
        raise ValueError(f"aspect ratio over 200 is not supported: {height}x{width}")
    h_bar = max(factor, round(height / factor) * factor)
    w_bar = max(factor, round(width / factor) * factor)
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


def clip_frame_size(height: int, width: int, nframes: int, budget: PixelBudget = PixelBudget(),
                    factor: int = IMAGE_FACTOR) -> tuple[int, int]:
    """The ``(h, w)`` every frame of an ``nframes`` clip is resized to, both sides multiples of
    ``factor`` (the vision spec's: 28 for Qwen2-VL, 32 for Qwen3-VL's 16-pixel patches)."""
    return smart_resize(height, width, factor, budget.min_pixels, budget.frame_max_pixels(nframes))
