"""Where a kernel runs, one rule for every op: CUDA tensors take Triton; CPU tensors take Triton's
interpreter when ``TRITON_INTERPRET=1`` (how the tests exercise the kernels), else torch. Also the
one construction of ``cu_seqlens``, the document offsets every varlen op reads."""

from __future__ import annotations

import functools
import os

import torch

__all__ = ["check_devices", "cu_seqlens", "interpreting", "reference", "use_triton"]

# What counts a window's launches while it runs (``livecc.infer.census``), else None.
observer = None


def reference(fn):
    """Marks a kernel's torch reference: to an ``observer`` counting launches, a call is one launch
    (the one kernel a GPU runs in its place) and what it does inside is not counted."""

    @functools.wraps(fn)
    def run(*args, **kwargs):
        if observer is None:
            return fn(*args, **kwargs)
        with observer.kernel():
            return fn(*args, **kwargs)

    return run


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def use_triton(tensor: torch.Tensor) -> bool:
    if tensor.is_cuda:
        return True
    return tensor.device.type == "cpu" and interpreting()


def check_devices(op: str, **tensors: torch.Tensor | None) -> None:
    """Every tensor an op reads must sit on the first one's device: a clear error naming the
    argument, instead of a Triton pointer error (or a silent copy on every call)."""
    named = [(name, t) for name, t in tensors.items() if t is not None]
    first_name, first = named[0]
    for name, t in named[1:]:
        if t.device != first.device:
            raise ValueError(f"{op}: {name} is on {t.device} but {first_name} is on {first.device}; "
                             "move them to one device")


def cu_seqlens(lengths, device=None) -> torch.Tensor:
    """int32 offsets ``[0, l0, l0 + l1, ...]`` of documents of ``lengths`` (a list or a tensor)."""
    lengths = torch.as_tensor(lengths, dtype=torch.int32, device=device)
    return torch.nn.functional.pad(lengths.cumsum(0, dtype=torch.int32), (1, 0))
