"""Decode steps and prefills from static buffers, replayed as CUDA graphs.

A decode step of a 7B model is a few hundred small kernels over one token per stream; launched
one by one from Python, their launch overhead is a large share of the step. ``DecodeGraphs`` runs
the step (embedding, every layer with the paged decode kernel, final norm, LM head) on static input
buffers, captures it once per number of streams stepped together, and afterwards only copies the
step's inputs (one host-to-device copy) and replays. The attention reads a fixed page-table width,
so one graph serves every cache length up to it; a stream outgrowing the width, or the pool
reallocating its buffers, rebuilds the graphs. Without CUDA (``capture=False``) the same static
step runs eagerly, which is how its bookkeeping is checked against the plain path.

``PrefillGraphs`` does the same for a round's prefill (every stream's new turn through every layer,
reading and writing the pages in place): the new tokens are padded up to a bucket of sizes, the
padding being one more document that attends only to itself in one scratch page (its rows are
thrown away, so what it computes does not matter, and no row mixes with another outside
attention), and the number of streams is padded with empty documents, so one graph per bucket
serves every mix of turns.
"""

from __future__ import annotations

import torch

from ..kernels import varlen_attention_paged
from . import census
from .cache import KVPool, StreamKVCache, padded_page_tables
from .decoder import paged_attention, run_layers

__all__ = ["DecodeGraphs", "PrefillGraphs"]

BUCKETS = (128, 256, 512, 1024, 2048, 4096)  # prefill tokens of a round, padded up to one of these
MAX_PAD = max(b - a for a, b in zip((0, *BUCKETS), BUCKETS))  # the most padding a bucket adds


class _Step:
    """Static buffers of a decode step over ``batch`` streams: one int64 vector holding, per stream,
    the token, its 3 positions, its write slot, its length and its page table."""

    def __init__(self, batch: int, width: int, device):
        self.batch, self.width = batch, width
        self.inputs = torch.zeros((6 + width) * batch, dtype=torch.long, device=device)
        self.staging = torch.zeros_like(self.inputs, device="cpu")
        if self.inputs.is_cuda:
            self.staging = self.staging.pin_memory()  # a faster host-to-device copy
        self.graph = None
        self.logits = None

    def fields(self, x: torch.Tensor):
        """``x`` as (tokens [B], positions [3, B], slots [B], lengths [B], page tables [B, width])."""
        b = self.batch
        return x[:b], x[b : 4 * b].view(3, b), x[4 * b : 5 * b], x[5 * b : 6 * b], x[6 * b :].view(b, self.width)


class DecodeGraphs:
    """One decode step for the streams of ``pool`` at a time: ``step(caches, tokens, positions)``
    writes the tokens' keys/values into the caches' next slots and returns the logits ``[B, V]``."""

    def __init__(self, model, pool: KVPool, *, capture: bool | None = None):
        self.model, self.pool = model, pool
        self.capture = pool.device.type == "cuda" if capture is None else capture
        self.width = 0  # page-table entries per stream the steps are built for
        self.growths = pool.growths
        self.steps: dict[int, _Step] = {}
        self.builds = 0  # static steps built (and captured) so far
        self.mempool = None

    @torch.no_grad()
    def step(self, caches: list[StreamKVCache], tokens: list[int], positions: list[int]) -> torch.Tensor:
        if any(c.pool is not self.pool for c in caches):
            raise ValueError("DecodeGraphs steps the streams of its own KVPool only")
        for c in caches:
            c.reserve(1)
        need = max(len(c.page_table) for c in caches)
        if need > self.width or self.pool.growths != self.growths:  # the width or captured addresses are stale
            if need > self.width:
                self.width = max(need, 2 * self.width, 4)
            self.growths = self.pool.growths
            self.steps.clear()
            self.mempool = None
        step = self.steps.get(len(caches))
        fresh = step is None
        if fresh:
            step = self.steps[len(caches)] = _Step(len(caches), self.width, self.pool.device)
        tok, pos, slot, length, table = step.fields(step.staging)
        tok.copy_(torch.tensor(tokens))
        pos.copy_(torch.tensor(positions).expand(3, -1))
        slot.copy_(torch.tensor([c.slot(c.length) for c in caches]))
        length.copy_(torch.tensor([c.length + 1 for c in caches]))
        table.copy_(torch.tensor(padded_page_tables(caches, self.width)))
        step.inputs.copy_(step.staging, non_blocking=True)  # pinned: no host stall (the last step's read fenced it)
        if fresh:
            self._build(step)
        if step.graph is not None:
            step.graph.replay()
            census.replayed()
        else:
            with census.captured():
                step.logits = self._run(step)
        return step.logits.clone()  # the next replay overwrites the static output

    def prepare(self, max_batch: int, max_pages: int) -> None:
        """Build (on CUDA: capture) the steps of every batch size up to ``max_batch`` at a page-table
        width of ``max_pages``, so no window pays a capture while the streams stay within them."""
        self.width = max(self.width, max_pages)
        self.growths = self.pool.growths
        self.steps.clear()
        self.mempool = None
        for batch in range(1, max_batch + 1):  # a zero step: length 0 attends to nothing, writes slot 0
            step = self.steps[batch] = _Step(batch, self.width, self.pool.device)
            self._build(step)

    def _run(self, step: _Step) -> torch.Tensor:
        lm = self.model.model.language_model
        tokens, positions, slots, lengths, table = step.fields(step.inputs)
        attend = paged_attention(self.pool, table.to(torch.int32), lengths.to(torch.int32),
                                 self.width * self.pool.page_size, lm.layers[0].self_attn.scaling)
        hidden = run_layers(lm, self.model.get_input_embeddings()(tokens), positions, self.pool, slots, attend)
        return self.model.lm_head(hidden).float()

    def _build(self, step: _Step) -> None:
        self.builds += 1
        if not self.capture:
            return
        # Warm up on a side stream (compiles the kernels; a real step on the real inputs, which the
        # replay repeats exactly), then capture into one memory pool shared by every batch size.
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            self._run(step)
        torch.cuda.current_stream().wait_stream(side)
        step.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(step.graph, pool=self.mempool):
            step.logits = self._run(step)
        self.mempool = step.graph.pool()


class _Prefill:
    """Static buffers of a prefill of ``bucket`` tokens over up to ``streams`` streams: the
    embeddings (and DeepStack features), and one int64 vector holding the positions, write slots,
    query offsets, cache lengths and page tables (the padding's document last)."""

    def __init__(self, bucket: int, streams: int, width: int, hidden: int, deep: int, dtype, device):
        self.bucket, self.streams, self.width = bucket, streams, width
        self.embeds = torch.zeros((bucket, hidden), dtype=dtype, device=device)
        # DeepStack features (Qwen3-VL), dense over the bucket: zero off the visual rows
        self.deep = torch.zeros((deep, bucket, hidden), dtype=dtype, device=device) if deep else None
        docs = streams + 1
        self.inputs = torch.zeros(4 * bucket + 2 * docs + 1 + docs * width, dtype=torch.long, device=device)
        self.staging = torch.zeros_like(self.inputs, device="cpu")
        if self.inputs.is_cuda:
            self.staging = self.staging.pin_memory()
        self.graph = None
        self.hidden = None

    def fields(self, x: torch.Tensor):
        """``x`` as (positions [3, T], slots [T], cu_seqlens_q [S + 2], lengths [S + 1], tables [S + 1, W])."""
        t, docs = self.bucket, self.streams + 1
        cut = [3 * t, t, docs + 1, docs]
        positions, slots, cu, lengths, tables = x.split([*cut, docs * self.width])
        return positions.view(3, t), slots, cu, lengths, tables.view(docs, self.width)


class PrefillGraphs:
    """``run(caches, embeds, positions, counts)``: the prefill of ``forward_tokens`` (the first
    ``counts[0]`` tokens for ``caches[0]`` and so on) from static buffers, replayed as a CUDA graph
    per bucket of total tokens. Rounds over ``BUCKETS[-1]`` tokens are for the caller to run plainly."""

    def __init__(self, model, pool: KVPool, *, capture: bool | None = None):
        self.model, self.pool = model, pool
        self.capture = pool.device.type == "cuda" if capture is None else capture
        self.width, self.streams = 0, 0  # page-table entries per stream and streams the graphs are built for
        self.growths = pool.growths
        self.steps: dict[int, _Prefill] = {}
        self.builds = 0
        self.mempool = None
        self.scratch: int | None = None  # the page the padding writes into and reads

    def fits(self, counts: list[int]) -> bool:
        return sum(counts) <= BUCKETS[-1]

    def prepare(self, max_streams: int, max_pages: int) -> None:
        """Build (on CUDA: capture) every bucket's prefill for up to ``max_streams`` streams at a
        page-table width of ``max_pages``, so no window pays a capture within those bounds."""
        self._scratch()
        self._reset(max(self.width, max_pages), max(self.streams, max_streams))
        for bucket in BUCKETS:
            self._build(self._new(bucket))

    @torch.no_grad()
    def run(self, caches: list[StreamKVCache], embeds: torch.Tensor, positions: torch.Tensor,
            counts: list[int], deep: torch.Tensor | None = None) -> torch.Tensor:
        if any(c.pool is not self.pool for c in caches):
            raise ValueError("PrefillGraphs runs the streams of its own KVPool only")
        n = sum(counts)
        bucket = next(b for b in BUCKETS if b >= n)
        for cache, k in zip(caches, counts):
            cache.reserve(k)
        self._scratch()  # before the growth check: taking scratch pages may grow the pool
        need = max(len(c.page_table) for c in caches)
        if need > self.width or len(caches) > self.streams or self.pool.growths != self.growths:
            self._reset(max(need, 2 * self.width, 4) if need > self.width else self.width,
                        max(len(caches), 2 * self.streams) if len(caches) > self.streams else self.streams)
        step = self.steps.get(bucket)
        fresh = step is None
        if fresh:
            step = self._new(bucket)
        self._stage(step, caches, positions, counts)
        step.embeds[:n].copy_(embeds)
        step.embeds[n:].zero_()
        if step.deep is not None:
            if deep is None:
                step.deep.zero_()
            else:
                step.deep[:, :n].copy_(deep)
                step.deep[:, n:].zero_()
        if fresh:
            self._build(step)
        if step.graph is not None:
            step.graph.replay()
            census.replayed()
        else:
            with census.captured():
                step.hidden = self._run(step)
        return step.hidden[:n].clone()

    def _stage(self, step: _Prefill, caches: list[StreamKVCache], positions: torch.Tensor, counts: list[int]) -> None:
        n, page = sum(counts), self.pool.page_size
        pad = step.bucket - n
        pos, slots, cu, lengths, tables = step.fields(step.staging)
        pos.zero_()
        pos[:, :n] = positions
        if caches:
            slots[:n] = torch.cat([c.slots(torch.arange(c.length, c.length + k)) for c, k in zip(caches, counts)])
        slots[n:] = self.scratch * page + torch.arange(pad) % page
        offsets = torch.tensor([0, *counts]).cumsum(0)
        cu.fill_(n)
        cu[: len(caches) + 1] = offsets
        cu[-1] = step.bucket  # the padding's document
        lengths.zero_()
        lengths[: len(caches)] = torch.tensor([c.length + k for c, k in zip(caches, counts)], dtype=torch.long)
        lengths[-1] = pad
        tables.zero_()
        if caches:
            tables[: len(caches)] = torch.tensor(padded_page_tables(caches, self.width))
        tables[-1] = self.scratch
        step.inputs.copy_(step.staging, non_blocking=True)

    def _scratch(self) -> None:
        if self.scratch is None:
            (self.scratch,) = self.pool.allocate(1)

    def _reset(self, width: int, streams: int) -> None:
        self.width = max(width, -(-MAX_PAD // self.pool.page_size))  # the padding's table row
        self.streams = streams
        self.growths = self.pool.growths
        self.steps.clear()
        self.mempool = None

    def _new(self, bucket: int) -> _Prefill:
        """A bucket's buffers, holding an empty round (every token padding) until staged."""
        hidden = self.model.get_input_embeddings().embedding_dim
        deep = len(getattr(self.model.config.vision_config, "deepstack_visual_indexes", None) or ())
        step = self.steps[bucket] = _Prefill(bucket, self.streams, self.width, hidden, deep, self.pool.dtype,
                                             self.pool.device)
        self._stage(step, [], torch.zeros(3, 0, dtype=torch.long), [])
        return step

    def _run(self, step: _Prefill) -> torch.Tensor:
        lm = self.model.model.language_model
        positions, slots, cu, lengths, tables = step.fields(step.inputs)
        cu, lengths, tables = cu.to(torch.int32), lengths.to(torch.int32), tables.to(torch.int32)
        scale = lm.layers[0].self_attn.scaling
        pool = self.pool

        def attend(i, q):
            return varlen_attention_paged(q, pool.keys[i], pool.values[i], tables, cu, lengths, step.bucket, scale)

        return run_layers(lm, step.embeds, positions, pool, slots, attend, step.deep)

    def _build(self, step: _Prefill) -> None:
        self.builds += 1
        if not self.capture:
            return
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            self._run(step)
        torch.cuda.current_stream().wait_stream(side)
        step.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(step.graph, pool=self.mempool):
            step.hidden = self._run(step)
        self.mempool = step.graph.pool()

