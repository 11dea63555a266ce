"""Decode steps from static buffers, replayed as CUDA graphs.

A decode step of a 7B model is a few hundred small kernels over one token per stream; launched
one by one from Python, their launch overhead is a large share of the step. ``DecodeGraphs`` runs
the step (embedding, every layer with the paged decode kernel, final norm, LM head) on static input
buffers, captures it once per number of streams stepped together, and afterwards only copies the
step's inputs (one host-to-device copy) and replays. The attention reads a fixed page-table width,
so one graph serves every cache length up to it; a stream outgrowing the width, or the pool
reallocating its buffers, rebuilds the graphs. Without CUDA (``capture=False``) the same static
step runs eagerly, which is how its bookkeeping is checked against the plain path.
"""

from __future__ import annotations

import torch

from .cache import KVPool, StreamKVCache, padded_page_tables
from .decoder import paged_attention, run_layers

__all__ = ["DecodeGraphs"]


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

    @classmethod
    def of(cls, model, pool: KVPool) -> DecodeGraphs:
        """The pool's decode graphs, built once and shared by every stream on it."""
        if pool.decode_graphs is None or pool.decode_graphs.model is not model:
            pool.decode_graphs = cls(model, pool)
        return pool.decode_graphs

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
        else:
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
