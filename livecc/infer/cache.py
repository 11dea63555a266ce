"""KV memory for streams: fixed-size pages in one pool, and each stream's ordered view of them.

Keys are stored after RoPE: evicting tokens leaves the survivors' keys as they are, each at the
position it was computed with, until the stream closes the gaps (:meth:`StreamKVCache.gaps` says
by how much each survivor moves; the engine re-rotates their keys and :meth:`StreamKVCache.shift`
records it). A stream holds ``ceil(live tokens / page size)`` pages; eviction fills the holes with
the last survivors and hands the emptied pages back to the pool, so a stream whose tokens expire
holds a bounded number of pages, and the pool, shared by every stream of a process, stops growing
once its streams do. Per token the cache keeps (on the host) its kind, stream time, index in
everything fed, the position range ``[lo, hi)`` its block occupies (a text token its position, a
window's visual tokens the whole range of their grid) and how far it has moved.
"""

from __future__ import annotations

import torch

__all__ = ["PAGE_SIZE", "KVPool", "StreamKVCache", "TEXT", "VISION", "padded_page_tables"]

TEXT, VISION = 0, 1
PAGE_SIZE = 64  # tokens a page holds, unless a pool is given another


class KVPool:
    """Per layer, keys and values ``[pages, page_size, Hkv, D]``; pages are lent to streams."""

    def __init__(self, n_layers: int, n_kv_heads: int, head_dim: int, dtype, device, *, page_size: int = PAGE_SIZE,
                 pages: int = 64):
        if page_size < 16 or page_size & (page_size - 1):
            raise ValueError(f"page size must be a power of two >= 16, got {page_size}")
        self.page_size, self.dtype, self.device = page_size, dtype, device
        shape = (pages, page_size, n_kv_heads, head_dim)
        self.keys = [torch.empty(shape, dtype=dtype, device=device) for _ in range(n_layers)]
        self.values = [torch.empty(shape, dtype=dtype, device=device) for _ in range(n_layers)]
        self.free = list(range(pages - 1, -1, -1))  # a stack: the lowest page is lent first
        self.growths = 0  # bumped whenever the buffers are reallocated (captured graphs hold their addresses)

    @classmethod
    def for_model(cls, model, **kwargs) -> KVPool:
        cfg = model.config.text_config
        head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        param = next(model.parameters())
        return cls(cfg.num_hidden_layers, cfg.num_key_value_heads, head_dim, param.dtype, param.device, **kwargs)

    @property
    def pages(self) -> int:
        return self.keys[0].shape[0]

    @property
    def pages_in_use(self) -> int:
        return self.pages - len(self.free)

    def ensure(self, pages: int) -> None:
        """Hold at least ``pages`` pages, allocated now rather than in the middle of a window."""
        while self.pages < pages:
            self._grow()

    def allocate(self, n: int) -> list[int]:
        while len(self.free) < n:
            self._grow()
        return [self.free.pop() for _ in range(n)]

    def release(self, pages: list[int]) -> None:
        self.free.extend(reversed(pages))

    def _grow(self) -> None:
        """Double the pool (amortised); lent pages keep their indices."""
        old = self.pages
        for buffers in (self.keys, self.values):
            for i, buf in enumerate(buffers):
                buffers[i] = torch.cat([buf, torch.empty_like(buf)])
        self.free = list(range(2 * old - 1, old - 1, -1)) + self.free
        self.growths += 1

    def slot_view(self, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values of ``layer`` as ``[pages * page_size, Hkv, D]``, indexed by slot."""
        k, v = self.keys[layer], self.values[layer]
        return k.view(-1, *k.shape[2:]), v.view(-1, *v.shape[2:])

    def nbytes(self) -> int:
        return sum(b.numel() * b.element_size() for b in (*self.keys, *self.values))


class StreamKVCache:
    """One stream's tokens in pool pages: token ``j`` is at slot ``page_table[j // S] * S + j % S``."""

    META = {"kind": torch.int8, "time": torch.float64, "origin": torch.long, "lo": torch.long, "hi": torch.long,
            "moved": torch.long}

    def __init__(self, pool: KVPool):
        self.pool = pool
        self.page_table: list[int] = []
        self.length = 0
        self.kind = torch.empty(0, dtype=torch.int8)  # TEXT or VISION, per cached token
        self.time = torch.empty(0, dtype=torch.float64)  # stream seconds the token belongs to
        self.origin = torch.empty(0, dtype=torch.long)  # index of the token in everything ever fed
        self.lo = torch.empty(0, dtype=torch.long)  # the position range its block occupies: [lo, hi)
        self.hi = torch.empty(0, dtype=torch.long)
        self.moved = torch.empty(0, dtype=torch.long)  # positions it has moved down, in all
        self.fed = 0
        self.evicted = 0

    def reserve(self, n: int) -> None:
        """Hold enough pages for ``n`` more tokens."""
        need = self.length + n
        pages = -(-need // self.pool.page_size)
        if pages > len(self.page_table):
            self.page_table += self.pool.allocate(pages - len(self.page_table))
        if need > self.kind.numel():  # metadata grows by doubling
            size = max(need, 2 * self.kind.numel())
            for name, dtype in self.META.items():
                grown = torch.empty(size, dtype=dtype)
                grown[: self.length] = getattr(self, name)[: self.length]
                setattr(self, name, grown)

    def slot(self, j: int) -> int:
        """Pool slot of token ``j``."""
        page = self.pool.page_size
        return self.page_table[j // page] * page + j % page

    def slots(self, j: torch.Tensor) -> torch.Tensor:
        """Pool slots of tokens ``j`` (int64, on the CPU): :meth:`slot` over a tensor."""
        page = self.pool.page_size
        return torch.tensor(self.page_table, dtype=torch.long)[j // page] * page + j % page

    def commit(self, n: int, kind: torch.Tensor | int, time: float, lo: torch.Tensor, hi: torch.Tensor) -> None:
        """Account for the ``n`` tokens every layer has just written after the live ones."""
        span = slice(self.length, self.length + n)
        self.kind[span], self.time[span], self.lo[span], self.hi[span] = kind, time, lo, hi
        self.origin[span] = torch.arange(self.fed, self.fed + n)
        self.moved[span] = 0
        self.length += n
        self.fed += n

    def evict(self, drop: torch.Tensor) -> int:
        """Remove live tokens where ``drop [length]`` is True. Attention does not depend on the order
        of cached keys (each keeps the rotation of its position), so the last survivors move into
        the holes: a window's eviction copies at most as many tokens as it drops, not every
        survivor behind them. ``origin`` keeps the order in which tokens were fed."""
        n_drop = int(drop.sum())
        if n_drop == 0:
            return 0
        live = self.length - n_drop
        holes = drop[:live].nonzero().flatten()
        movers = (~drop[live : self.length]).nonzero().flatten() + live
        if holes.numel():
            src, dst = (self.slots(i).to(self.pool.device) for i in (movers, holes))
            for layer in range(len(self.pool.keys)):
                for buf in self.pool.slot_view(layer):
                    buf[dst] = buf[src]  # holes lie before `live`, movers after: no overlap
            for name in self.META:
                meta = getattr(self, name)
                meta[holes] = meta[movers]
        self.length = live
        self.evicted += n_drop
        held = -(-self.length // self.pool.page_size)
        self.pool.release(self.page_table[held:])
        del self.page_table[held:]
        return n_drop

    def gaps(self, end: int) -> tuple[torch.Tensor, int]:
        """Positions below ``end`` (the stream's next) that no live token's block occupies, as
        ``(how far each live token would move down to close the gaps below it [length], how many
        are free in all)``."""
        lo, hi = self.lo[: self.length], self.hi[: self.length]
        order = torch.argsort(lo)
        starts, ends = lo[order], torch.cummax(hi[order], 0).values
        # a block starts a gap when it begins past every block before it ends
        reach = torch.cat([torch.zeros(1, dtype=torch.long), ends[:-1]]) if self.length else ends
        free_before = torch.cumsum((starts - reach).clamp(min=0), 0)
        shift = torch.empty_like(lo)
        shift[order] = free_before
        covered_end = int(ends[-1]) if self.length else 0
        total = (int(free_before[-1]) if self.length else 0) + max(0, end - covered_end)
        return shift, total

    def shift(self, moved: torch.Tensor) -> None:
        """Record that the live tokens moved down by ``moved [length]`` positions."""
        for name in ("lo", "hi"):
            getattr(self, name)[: self.length] -= moved
        self.moved[: self.length] += moved

    def close(self) -> None:
        """Give every page back to the pool."""
        self.pool.release(self.page_table)
        self.page_table, self.length = [], 0

    def nbytes(self) -> int:
        """Pool memory this stream holds."""
        return self.pool.nbytes() * len(self.page_table) // self.pool.pages


def padded_page_tables(caches: list[StreamKVCache], width: int | None = None) -> list[list[int]]:
    """The streams' page tables as rows of ``width`` (default: the longest), padded with page 0,
    which the decode kernel never reads past a stream's length."""
    width = max(len(c.page_table) for c in caches) if width is None else width
    return [c.page_table + [0] * (width - len(c.page_table)) for c in caches]
