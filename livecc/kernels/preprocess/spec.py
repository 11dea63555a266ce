"""Patch geometry and normalisation of the Qwen2-VL vision tower's input."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["QWEN2VL_MEAN", "QWEN2VL_STD", "VisionSpec"]

QWEN2VL_MEAN = (0.48145466, 0.4578275, 0.40821073)
QWEN2VL_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass(frozen=True)
class VisionSpec:
    """Patch geometry and normalisation of the Qwen2-VL vision tower's input."""

    patch_size: int = 14
    temporal_patch_size: int = 2
    merge_size: int = 2
    mean: tuple[float, float, float] = QWEN2VL_MEAN
    std: tuple[float, float, float] = QWEN2VL_STD

    @property
    def factor(self) -> int:
        """Pixels per LLM token side: a multiple both sides of a frame must be."""
        return self.patch_size * self.merge_size

    @property
    def row_size(self) -> int:
        """Values per ViT patch row: 3 * 2 * 14 * 14 = 1176."""
        return 3 * self.temporal_patch_size * self.patch_size**2

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
