"""Frame-to-patch preprocessing for the Qwen2-VL vision tower: uint8 frames -> ViT patch rows."""

from __future__ import annotations

import torch

from ..dispatch import use_triton
from .reference import check_frames, preprocess_frames_reference, resize_frames
from .spec import VisionSpec

__all__ = ["VisionSpec", "preprocess_frames", "preprocess_frames_reference", "resize_frames"]


def preprocess_frames(
    frames: torch.Tensor,
    size: tuple[int, int] | None = None,
    spec: VisionSpec = VisionSpec(),
    dtype: torch.dtype = torch.float32,
) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 ``[T, H, W, 3]`` -> patch rows ``[ceil(T/2) * h/14 * w/14, 1176]`` and ``grid_thw [1, 3]``.

    ``size`` is the ``(h, w)`` to resize to (both multiples of 28; default: the frames' own size).
    Resize (antialiased bicubic, rounded to uint8), rescale, normalise and patchify in Qwen2-VL's
    order. On CUDA (or under ``TRITON_INTERPRET=1``) one Triton pass does it all.
    """
    if not use_triton(frames):
        return preprocess_frames_reference(frames, size, spec, dtype)
    from .triton import preprocess_frames_triton

    return preprocess_frames_triton(frames, check_frames(frames, size, spec), spec, dtype)
