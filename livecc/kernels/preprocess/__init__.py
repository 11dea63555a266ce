"""Frame-to-patch preprocessing for the Qwen2-VL vision tower."""

from .reference import preprocess_frames_reference, resize_frames
from .spec import VisionSpec

__all__ = ["VisionSpec", "preprocess_frames_reference", "resize_frames"]
