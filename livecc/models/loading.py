"""Load a Qwen2-VL / Qwen2.5-VL model and its processor from a local directory (or the offline tiny default)."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForImageTextToText

from ..qwen2vl import load_processor, offline_processor
from .tiny import tiny_qwen2vl

__all__ = ["load_model"]


def load_model(path: str, device: str | None = None, dtype: torch.dtype | None = None):
    """``(model, processor)``. ``path="tiny"`` builds a random tiny Qwen2-VL with the offline
    processor (no download), for smoke runs; anything else is a local checkpoint directory."""
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if torch.device(device).type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r}: this PyTorch ({torch.__version__}) has no CUDA device to use")
    dtype = dtype or (torch.bfloat16 if device.startswith("cuda") else torch.float32)
    if path == "tiny":
        return tiny_qwen2vl().to(device=device, dtype=dtype), offline_processor()
    if not Path(path).is_dir():
        raise FileNotFoundError(f"{path}: model directory not found (no model hub is used)")
    model_type = AutoConfig.from_pretrained(path, local_files_only=True).model_type
    if model_type not in ("qwen2_vl", "qwen2_5_vl"):
        raise ValueError(f"{path}: a {model_type!r} checkpoint; livecc runs Qwen2-VL and Qwen2.5-VL")
    model = AutoModelForImageTextToText.from_pretrained(path, dtype=dtype, local_files_only=True)
    return model.to(device).eval(), load_processor(path)
