"""What every kernel test compares with: one relative error and one tolerance per dtype."""

import torch

TOL = {torch.float32: 1e-5, torch.bfloat16: 2e-2}  # relative, on norms; bf16 rounds outputs and gradients


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """``|a - b| / |b|`` in float64 over the whole tensor."""
    return ((a.double() - b.double()).norm() / b.double().norm().clamp(min=1e-30)).item()
