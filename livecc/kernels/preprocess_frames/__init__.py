"""Frame-to-patch preprocessing for a Qwen2-VL-style vision tower: uint8 frames -> ViT patch rows.

Resize (antialiased bicubic, rounded to uint8), rescale, normalise and patchify in Qwen2-VL's
order. ``preprocess_frames`` runs where its inputs are (``livecc.kernels.dispatch``): one Triton
pass (a ``torch.library`` custom op) on CUDA or in Triton's interpreter, the torch reference on CPU.
"""

from __future__ import annotations

import torch

from ..dispatch import use_triton
from .reference import CLIP_MEAN, CLIP_STD, PatchGeometry, check_frames, preprocess_frames_reference, resize_frames

__all__ = ["CLIP_MEAN", "CLIP_STD", "PatchGeometry", "preprocess_frames", "preprocess_frames_reference",
           "resize_frames"]


@torch.library.custom_op("livecc::preprocess_frames_fwd", mutates_args=())
def _fwd(frames: torch.Tensor, height: int, width: int, patch_size: int, temporal_patch_size: int, merge_size: int,
         mean: list[float], std: list[float], dtype: torch.dtype) -> torch.Tensor:
    from .triton import preprocess_frames_fwd

    geometry = PatchGeometry(patch_size, temporal_patch_size, merge_size, tuple(mean), tuple(std))
    return preprocess_frames_fwd(frames, (height, width), geometry, dtype)


@_fwd.register_fake
def _(frames, height, width, patch_size, temporal_patch_size, merge_size, mean, std, dtype):
    rows = PatchGeometry(patch_size, temporal_patch_size, merge_size).rows(frames.shape[0], (height, width))
    return frames.new_empty((rows, 3 * temporal_patch_size * patch_size**2), dtype=dtype)


def preprocess_frames(
    frames: torch.Tensor,
    size: tuple[int, int] | None = None,
    geometry: PatchGeometry = PatchGeometry(),
    dtype: torch.dtype = torch.float32,
) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 ``[T, H, W, 3]`` -> patch rows ``[ceil(T/2) * h/14 * w/14, 1176]`` and ``grid_thw [1, 3]``.

    ``size`` is the ``(h, w)`` to resize to (both multiples of the patch size times the merge size;
    default: the frames' own size); ``geometry`` the patch sizes and normalisation."""
    size = check_frames(frames, size, geometry)
    if not use_triton(frames):
        return preprocess_frames_reference(frames, size, geometry, dtype)
    rows = _fwd(frames, *size, geometry.patch_size, geometry.temporal_patch_size, geometry.merge_size,
                list(geometry.mean), list(geometry.std), dtype)
    return rows, geometry.grid(frames.shape[0], size)
