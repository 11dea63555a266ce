"""Keys cached after RoPE, moved to other positions in torch: the oracle and CPU path of ``rerotate_keys``."""

from __future__ import annotations

import torch

from ..dispatch import reference

__all__ = ["rerotate_keys_reference", "shift_angles"]


def shift_angles(shifts: torch.Tensor, inv_freq: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The rotation by ``-shift`` of each distinct shift: ``(row of each shift [n], cos [r, D/2],
    sin [r, D/2])`` in fp32, the angles taken in float64 (a shift of 1e5 positions times a
    frequency near 1 leaves fp32 without a digit of the angle)."""
    distinct, rows = torch.unique(shifts.to(torch.int64).cpu(), return_inverse=True)
    angles = -distinct.double()[:, None] * inv_freq.double().cpu()[None, :]
    return rows, angles.cos().float(), angles.sin().float()


@reference
def rerotate_keys_reference(keys: torch.Tensor, slots: torch.Tensor, rows: torch.Tensor, cos: torch.Tensor,
                            sin: torch.Tensor) -> None:
    """In place: rotate ``keys[slots[i]]`` (``keys [S, H, D]``, rotate-half layout: dims ``j`` and
    ``j + D/2`` share frequency ``j``) by the angles of ``rows[i]`` (``cos``/``sin [r, D/2]``).
    A key rotated for position ``p`` then sits at ``p - shift``: RoPE's rotations compose."""
    half = keys.shape[-1] // 2
    k = keys[slots].float()
    c, s = cos[rows][:, None, :], sin[rows][:, None, :]
    k1, k2 = k[..., :half], k[..., half:]
    keys[slots] = torch.cat((k1 * c - k2 * s, k2 * c + k1 * s), dim=-1).to(keys.dtype)
