"""Peak throughput of the GPUs livecc runs on: the one table MFU is computed against, in training
and in the benchmarks."""

from __future__ import annotations

import torch

__all__ = ["PEAK_BF16_FLOPS", "peak_flops"]

PEAK_BF16_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12}  # dense bf16, datasheet


def peak_flops(device: torch.device | str | None = None) -> float | None:
    """Dense bf16 FLOP/s of ``device`` (the current CUDA device by default); None for a CPU or an
    unknown GPU."""
    if not torch.cuda.is_available() or (device is not None and torch.device(device).type != "cuda"):
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_BF16_FLOPS.items() if k in name), None)
