"""Load a Qwen2-VL / Qwen2.5-VL / Qwen3-VL (dense or MoE) model and its processor from a local directory (or an
offline tiny one)."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForImageTextToText

from ..qwen_vl import load_processor, offline_processor
from .tiny import ARCHS, tiny_config, tiny_qwen_vl

__all__ = ["TINY_MODELS", "load_model", "model_config", "placement"]

# ``tiny`` (Qwen2-VL) and ``tiny:<arch>``, each with its arch: random tiny models with the offline processor,
# for smoke runs
TINY_MODELS = {"tiny": "qwen2_vl", **{f"tiny:{arch}": arch for arch in ARCHS}}


def model_config(path: str):
    """The Hugging Face config of the model ``load_model(path)`` loads, without reading its weights."""
    if path in TINY_MODELS:
        return tiny_config(arch=TINY_MODELS[path])
    if not Path(path).is_dir():
        raise FileNotFoundError(f"{path}: model directory not found (no model hub is used)")
    config = AutoConfig.from_pretrained(path, local_files_only=True)
    if config.model_type not in ARCHS:
        raise ValueError(f"{path}: a {config.model_type!r} checkpoint; livecc runs Qwen2-VL, Qwen2.5-VL, Qwen3-VL and "
                         "Qwen3-VL-MoE")
    return config


def placement(device: str | None = None, dtype: torch.dtype | None = None) -> tuple[str, torch.dtype]:
    """Where and in what ``load_model`` loads where not told: the GPU if there is one, else the CPU;
    bf16 on a GPU, fp32 elsewhere."""
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if torch.device(device).type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r}: this PyTorch ({torch.__version__}) has no CUDA device to use")
    return device, dtype or (torch.bfloat16 if device.startswith("cuda") else torch.float32)


def load_model(path: str, device: str | None = None, dtype: torch.dtype | None = None):
    """``(model, processor)``. ``path="tiny"`` builds a random tiny Qwen2-VL with the offline
    processor (no download), ``"tiny:qwen3_vl"`` a tiny Qwen3-VL (any of :data:`TINY_MODELS`), for
    smoke runs; anything else is a local checkpoint directory."""
    device, dtype = placement(device, dtype)
    if path in TINY_MODELS:
        arch = TINY_MODELS[path]
        return tiny_qwen_vl(arch=arch).to(device=device, dtype=dtype), offline_processor(arch)
    config = model_config(path)  # a clear error for a missing directory or another architecture
    model = AutoModelForImageTextToText.from_pretrained(path, config=config, dtype=dtype, local_files_only=True)
    return model.to(device).eval(), load_processor(path)
