"""Pure-torch frame-to-patch preprocessing: the oracle and CPU path for ``preprocess_frames``."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..dispatch import reference

__all__ = ["CLIP_MEAN", "CLIP_STD", "PatchGeometry", "check_frames", "preprocess_frames_reference", "resize_frames"]

# The normalisation of OpenAI CLIP's image tower, which Qwen2-VL's keeps.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass(frozen=True)
class PatchGeometry:
    """How frames become patch rows: patch sides, frames per temporal patch, the spatial merge of
    the rows' order, and the per-channel normalisation."""

    patch_size: int = 14
    temporal_patch_size: int = 2
    merge_size: int = 2
    mean: tuple[float, float, float] = CLIP_MEAN
    std: tuple[float, float, float] = CLIP_STD

    @property
    def factor(self) -> int:
        """Pixels per merged patch side: a multiple both sides of a frame must be."""
        return self.patch_size * self.merge_size

    @property
    def row_size(self) -> int:
        """Values per patch row: 3 * 2 * 14 * 14 = 1176."""
        return 3 * self.temporal_patch_size * self.patch_size**2

    def thw(self, n_frames: int, size: tuple[int, int]) -> tuple[int, int, int]:
        """The ViT grid (temporal patches, patch rows, patch columns) of ``n_frames`` frames of ``size``."""
        return math.ceil(n_frames / self.temporal_patch_size), size[0] // self.patch_size, size[1] // self.patch_size

    def grid(self, n_frames: int, size: tuple[int, int]) -> torch.Tensor:
        """``grid_thw [1, 3]`` of ``n_frames`` frames of ``size``."""
        return torch.tensor([self.thw(n_frames, size)], dtype=torch.long)

    def rows(self, n_frames: int, size: tuple[int, int]) -> int:
        return math.prod(self.thw(n_frames, size))


def resize_frames(frames: torch.Tensor, size: tuple[int, int], chunk: int = 16) -> torch.Tensor:
    """Bicubic, antialiased resize of uint8 ``[T, H, W, 3]`` frames (what torchvision's resize does)."""
    if tuple(frames.shape[1:3]) == tuple(size):
        return frames
    out = torch.empty((frames.shape[0], *size, 3), dtype=torch.uint8, device=frames.device)
    for i in range(0, frames.shape[0], chunk):  # bounded float memory for long 1080p clips
        x = frames[i : i + chunk].permute(0, 3, 1, 2).float()
        y = F.interpolate(x, size=size, mode="bicubic", antialias=True, align_corners=False)
        out[i : i + chunk] = y.round_().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1)
    return out


def check_frames(frames: torch.Tensor, size: tuple[int, int] | None, spec: PatchGeometry) -> tuple[int, int]:
    """Validate uint8 ``[T, H, W, 3]`` frames and a target size; return the size (default: theirs)."""
    if frames.dtype != torch.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"expected uint8 [T, H, W, 3] frames, got {frames.dtype} {tuple(frames.shape)}")
    if frames.shape[0] == 0:
        raise ValueError("no frames to preprocess")
    size = tuple(frames.shape[1:3]) if size is None else tuple(size)
    if size[0] % spec.factor or size[1] % spec.factor:
        raise ValueError(f"size {size} is not a multiple of {spec.factor}; use smart_resize")
    return size


@reference
def preprocess_frames_reference(
    frames: torch.Tensor,
    size: tuple[int, int] | None = None,
    spec: PatchGeometry = PatchGeometry(),
    dtype: torch.dtype = torch.float32,
) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 ``[T, H, W, 3]`` -> ViT patch rows ``[T/2 * h/14 * w/14, 1176]`` and ``grid_thw [1, 3]``.

    Frames are resized to ``size`` (bicubic, antialiased, rounded to uint8 like the reference path),
    rescaled by 1/255, normalised, and patchified in Qwen2-VL's order (temporal patch, then the
    2x2 merge groups row by row). An odd frame count repeats the last frame, as Hugging Face does.
    """
    size = check_frames(frames, size, spec)
    frames = resize_frames(frames, size)
    t, h, w, _ = frames.shape
    p, tp, m = spec.patch_size, spec.temporal_patch_size, spec.merge_size
    if t % tp:
        frames = torch.cat([frames, frames[-1:].expand(tp - t % tp, -1, -1, -1)])
        t = frames.shape[0]
    mean = torch.tensor(spec.mean, device=frames.device).view(1, 3, 1, 1)
    std = torch.tensor(spec.std, device=frames.device).view(1, 3, 1, 1)
    x = (frames.permute(0, 3, 1, 2).float() / 255 - mean) / std  # [T, 3, H, W]
    gt, gh, gw = t // tp, h // p, w // p
    x = x.reshape(gt, tp, 3, gh // m, m, p, gw // m, m, p)
    x = x.permute(0, 3, 6, 4, 7, 2, 1, 5, 8)  # t, h-block, w-block, h-in, w-in | c, tp, p, p
    rows = x.reshape(gt * gh * gw, 3 * tp * p * p).to(dtype)
    return rows, torch.tensor([[gt, gh, gw]], dtype=torch.long)
