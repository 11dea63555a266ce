"""Frame-to-patch preprocessing for the Qwen2-VL vision tower."""

from .reference import preprocess_frames_reference

__all__ = ["preprocess_frames_reference"]
