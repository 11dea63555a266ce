"""Where a kernel runs: CUDA tensors take Triton; CPU tensors take Triton's interpreter when
``TRITON_INTERPRET=1`` (how the tests exercise the kernels), else the torch reference."""

from __future__ import annotations

import os

import torch

__all__ = ["interpreting", "use_triton"]


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def use_triton(tensor: torch.Tensor) -> bool:
    if tensor.is_cuda:
        return True
    return tensor.device.type == "cpu" and interpreting()
