"""Cached keys moved to new positions in place: ``rerotate_keys(keys, slots, rows, cos, sin)``.

A stream that evicts tokens closes the gaps in its positions (StreamingLLM): the survivors after a
gap move down by its length. Their keys were stored already rotated for their old positions, so
each is rotated again by minus its shift (rotations compose: exact up to rounding), in place in
the KV pool, one launch per layer. The angles come from :func:`shift_angles` (float64)."""

from __future__ import annotations

import torch

from ..dispatch import check_devices, use_triton
from .reference import rerotate_keys_reference, shift_angles

__all__ = ["rerotate_keys", "rerotate_keys_reference", "shift_angles"]


def rerotate_keys(keys: torch.Tensor, slots: torch.Tensor, rows: torch.Tensor, cos: torch.Tensor,
                  sin: torch.Tensor) -> None:
    """``keys [S, H, D]`` (a layer's pool, pages flattened; rotate-half layout, D even): the key in
    slot ``slots[i]`` is rotated by the angles of row ``rows[i]`` of ``cos``/``sin [r, D/2]``."""
    if keys.ndim != 3 or keys.shape[-1] % 2 or keys.stride(-1) != 1 or cos.shape != sin.shape \
            or cos.shape[-1] != keys.shape[-1] // 2:
        raise ValueError(f"expected keys [S, H, D] (D even) and cos/sin [r, D/2]; got {tuple(keys.shape)}, "
                         f"{tuple(cos.shape)}")
    if slots.shape != rows.shape:
        raise ValueError("slots and rows must have one entry per key")
    check_devices("rerotate_keys", keys=keys, slots=slots, rows=rows, cos=cos, sin=sin)
    if use_triton(keys):
        from .triton import rerotate_keys_fwd

        rerotate_keys_fwd(keys, slots, rows, cos.float().contiguous(), sin.float().contiguous())
    else:
        rerotate_keys_reference(keys, slots, rows, cos, sin)
