"""Load a Qwen2-VL / Qwen2.5-VL / Qwen3-VL (dense or MoE) model and its processor from a local directory (or an
offline tiny one)."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForImageTextToText

from ..qwen_vl import load_processor, offline_processor
from .tiny import ARCHS, tiny_qwen_vl

__all__ = ["TINY_MODELS", "load_model"]

# ``tiny`` (Qwen2-VL) and ``tiny:<arch>``: random tiny models with the offline processor, for smoke runs
TINY_MODELS = ("tiny", *(f"tiny:{arch}" for arch in ARCHS))


def load_model(path: str, device: str | None = None, dtype: torch.dtype | None = None):
    """``(model, processor)``. ``path="tiny"`` builds a random tiny Qwen2-VL with the offline
    processor (no download), ``"tiny:qwen3_vl"`` a tiny Qwen3-VL (any of :data:`TINY_MODELS`), for
    smoke runs; anything else is a local checkpoint directory."""
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if torch.device(device).type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r}: this PyTorch ({torch.__version__}) has no CUDA device to use")
    dtype = dtype or (torch.bfloat16 if device.startswith("cuda") else torch.float32)
    if path in TINY_MODELS:
        arch = path.partition(":")[2] or "qwen2_vl"
        return tiny_qwen_vl(arch=arch).to(device=device, dtype=dtype), offline_processor(arch)
    if not Path(path).is_dir():
        raise FileNotFoundError(f"{path}: model directory not found (no model hub is used)")
    model_type = AutoConfig.from_pretrained(path, local_files_only=True).model_type
    if model_type not in ARCHS:
        raise ValueError(f"{path}: a {model_type!r} checkpoint; livecc runs Qwen2-VL, Qwen2.5-VL, Qwen3-VL and "
                         "Qwen3-VL-MoE")
    model = AutoModelForImageTextToText.from_pretrained(path, dtype=dtype, local_files_only=True)
    return model.to(device).eval(), load_processor(path)
