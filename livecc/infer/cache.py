"""A stream's KV cache: one preallocated buffer per layer, compacted when tokens are evicted.

Keys are stored after RoPE, so evicting tokens never re-rotates the survivors: each keeps the
position it was computed with. Memory is bounded by the buffer, which grows (doubling) only while
the live tokens outgrow it; with visual tokens evicted past a horizon it stops growing.
"""

from __future__ import annotations

import torch

__all__ = ["StreamKVCache", "TEXT", "VISION"]

TEXT, VISION = 0, 1


class StreamKVCache:
    def __init__(self, n_layers: int, n_kv_heads: int, head_dim: int, dtype, device, capacity: int = 4096):
        self.shape = (n_kv_heads, head_dim)
        self.dtype, self.device = dtype, device
        self.keys = [torch.empty(capacity, *self.shape, dtype=dtype, device=device) for _ in range(n_layers)]
        self.values = [torch.empty(capacity, *self.shape, dtype=dtype, device=device) for _ in range(n_layers)]
        self.length = 0
        self.kind = torch.empty(capacity, dtype=torch.int8)  # TEXT or VISION, per cached token
        self.time = torch.empty(capacity, dtype=torch.float64)  # stream seconds the token belongs to
        self.origin = torch.empty(capacity, dtype=torch.long)  # index of the token in everything ever fed
        self.fed = 0
        self.evicted = 0

    @property
    def capacity(self) -> int:
        return self.keys[0].shape[0]

    def reserve(self, n: int) -> None:
        """Make room for ``n`` more tokens (doubling, so growth is amortised)."""
        need = self.length + n
        if need <= self.capacity:
            return
        new = max(need, 2 * self.capacity)
        for buffers in (self.keys, self.values):
            for i, old in enumerate(buffers):
                grown = torch.empty(new, *self.shape, dtype=self.dtype, device=self.device)
                grown[: self.length] = old[: self.length]
                buffers[i] = grown
        for name in ("kind", "time", "origin"):
            old = getattr(self, name)
            grown = torch.empty(new, dtype=old.dtype)
            grown[: self.length] = old[: self.length]
            setattr(self, name, grown)

    def write(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store ``k/v [n, Hkv, D]`` after the live tokens; return all live keys and values of the layer."""
        end = self.length + k.shape[0]
        self.keys[layer][self.length : end] = k
        self.values[layer][self.length : end] = v
        return self.keys[layer][:end], self.values[layer][:end]

    def commit(self, n: int, kind: torch.Tensor | int, time: float) -> None:
        """Account for the ``n`` tokens every layer has just written."""
        self.kind[self.length : self.length + n] = kind
        self.time[self.length : self.length + n] = time
        self.origin[self.length : self.length + n] = torch.arange(self.fed, self.fed + n)
        self.length += n
        self.fed += n

    def evict(self, drop: torch.Tensor) -> int:
        """Remove live tokens where ``drop [length]`` is True; survivors keep order and rotation."""
        n_drop = int(drop.sum())
        if n_drop == 0:
            return 0
        keep = (~drop).nonzero().flatten()
        keep_dev = keep.to(self.device)
        for buffers in (self.keys, self.values):
            for buf in buffers:
                buf[: keep.numel()] = buf.index_select(0, keep_dev)
        for meta in (self.kind, self.time, self.origin):
            meta[: keep.numel()] = meta[keep]
        self.length = keep.numel()
        self.evicted += n_drop
        return n_drop

    def nbytes(self) -> int:
        return sum(b.numel() * b.element_size() for b in (*self.keys, *self.values))
