"""Triton kernels, each beside its pure-torch reference."""

from .preprocess import preprocess_frames_reference

__all__ = ["preprocess_frames_reference"]
