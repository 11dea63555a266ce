"""Images of SFT conversations: read as uint8 RGB and sized by the image processor's pixel bounds."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..qwen_vl.vision import smart_resize

__all__ = ["ImageError", "image_pixel_bounds", "image_size", "load_image"]

# Hugging Face's Qwen2-VL image processor defaults (min_pixels, max_pixels).
DEFAULT_BOUNDS = (56 * 56, 28 * 28 * 1280)
MAX_IMAGE_BYTES = 256 * 2**20


class ImageError(RuntimeError):
    """An image that cannot be read; the message names the path."""


def load_image(path: str | Path) -> torch.Tensor:
    """uint8 ``[1, H, W, 3]`` RGB pixels of the image file at ``path`` (palette, grey and alpha
    images converted to RGB as Hugging Face's processor does)."""
    from PIL import Image

    path = Path(path)
    if not path.is_file():
        raise ImageError(f"{path}: image file not found")
    if path.stat().st_size > MAX_IMAGE_BYTES:
        raise ImageError(f"{path}: image file over {MAX_IMAGE_BYTES >> 20} MiB")
    try:
        with Image.open(path) as image:
            pixels = np.asarray(image.convert("RGB"))
    except Exception as e:  # PIL raises many types for a corrupt or oversized file
        raise ImageError(f"{path}: cannot read image ({type(e).__name__}: {e})") from e
    return torch.from_numpy(pixels.copy())[None]


def image_pixel_bounds(processor) -> tuple[int, int]:
    """``(min_pixels, max_pixels)`` of the processor's image processor (Hugging Face keeps them in
    ``size`` as ``shortest_edge``/``longest_edge``, older versions as attributes)."""
    image_processor = getattr(processor, "image_processor", None)
    size = getattr(image_processor, "size", None) or {}
    get = size.get if isinstance(size, dict) else lambda k: getattr(size, k, None)
    low = get("shortest_edge") or getattr(image_processor, "min_pixels", None) or DEFAULT_BOUNDS[0]
    high = get("longest_edge") or getattr(image_processor, "max_pixels", None) or DEFAULT_BOUNDS[1]
    return int(low), int(high)


def image_size(pixels: torch.Tensor, bounds: tuple[int, int], factor: int, source: str) -> tuple[int, int]:
    """The size an image of ``pixels [1, H, W, 3]`` is resized to by its processor's rule: both
    sides multiples of ``factor`` (the vision tower's patch times its merge: 28 for Qwen2-VL, 32
    for Qwen3-VL), the area within ``bounds``."""
    try:
        return smart_resize(pixels.shape[1], pixels.shape[2], factor, *bounds)
    except ValueError as e:  # a 1-pixel or 10000x10 image
        raise ImageError(f"{source}: {e}") from e
