"""The streaming engine: many streams on one model and KV pool, stepped together a window at a time.

It schedules; the :class:`~livecc.infer.runner.ModelRunner` runs the model and the
:class:`~livecc.infer.policy.StreamPolicy` holds the per-stream rules. A window of every stream
goes ``encode`` (one ViT call over all their frames) -> ``prefill`` (one packed forward of all
their new turns over their caches) -> ``decode`` (batched steps over the streams still talking)
-> ``evict`` (tokens past each stream's bounds; survivors' positions closing the gaps). Each
window is one user turn (``Time=a-b s`` from the window's own times + its frames, the query on the
first turn and any question asked since), prefilled with M-RoPE positions continuing the cache;
the answer runs until the streaming EOS ``' ...'``, ``<|im_end|>`` or ``max_new_tokens``, stays in
the cache and is closed (``' ...<|im_end|>\\n'``) at the start of the next window, so the cache
always holds exactly the training format.

The decode loop reads the host once per step for all streams (the chosen tokens) and copies them
back once; eviction reads only host-side metadata. A stream's state is a plain
:class:`~livecc.infer.state.StreamState` with its own positions, sampling state and cache, so its
output is the one it would produce alone.
"""

from __future__ import annotations

import time
import weakref
from dataclasses import replace

import torch

from ..data.windows import FrameWindow
from ..kernels import preprocess_frames
from ..qwen_vl import VideoFormat, VisionSpec, smart_resize
from . import census
from .cache import PAGE_SIZE, TEXT, KVPool, StreamKVCache
from .config import SessionConfig
from .policy import MAX_QUERY_TOKENS, MAX_QUESTION_TOKENS, StreamPolicy
from .runner import ModelRunner, upload
from .state import StreamState, Trace, WindowResult

__all__ = ["StreamEngine", "StreamState", "Trace", "WindowResult"]

# The engine serving each pool: sessions made over one pool are stepped together by one engine.
_ENGINES: weakref.WeakKeyDictionary[KVPool, StreamEngine] = weakref.WeakKeyDictionary()


class _PhaseClock:
    """Phase boundaries of a window: CUDA events on GPU (read once, at the window's end), else wall time."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.marks: list = []
        census.window()
        self.mark()

    def mark(self) -> None:
        if self.marks:
            census.mark()
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            self.marks.append(event)
        else:
            self.marks.append(time.perf_counter())

    def milliseconds(self) -> list[float]:
        census.read()  # on a GPU, the window's one wait for the device (its last event)
        if self.cuda:
            self.marks[-1].synchronize()
            return [a.elapsed_time(b) for a, b in zip(self.marks, self.marks[1:])]
        return [(b - a) * 1e3 for a, b in zip(self.marks, self.marks[1:])]


class _Saved:
    """What a window changes in a stream before its eviction, to put back when the window fails."""

    def __init__(self, s: StreamState):
        self.s, self.cache = s, s.cache
        self.scalars = (s.next_pos, s.clock, s.window_index, list(s.pending), list(s.questions))
        self.seen = s.seen.clone()
        self.cached = (s.cache.length, s.cache.fed, list(s.cache.page_table))
        self.traced = None if s.trace is None else {k: len(v) for k, v in vars(s.trace).items()}

    def restore(self) -> None:
        s, cache = self.s, self.cache
        s.next_pos, s.clock, s.window_index, s.pending, s.questions = self.scalars
        s.seen.copy_(self.seen)
        cache.length, cache.fed, table = self.cached
        cache.pool.release(cache.page_table[len(table):])  # pages reserved for the failed window
        cache.page_table = table
        if self.traced is not None:
            for k, n in self.traced.items():
                del getattr(s.trace, k)[n:]


class StreamEngine:
    def __init__(self, model, processor, pool: KVPool, *, cuda_graphs: bool = True):
        self.runner = ModelRunner(model, pool, cuda_graphs=cuda_graphs)
        self.model, self.pool, self.device, self.dtype = model, pool, self.runner.device, self.runner.dtype
        self.spec = VisionSpec.from_processor(processor)
        self.tokenizer = getattr(processor, "tokenizer", processor)
        self.policy = StreamPolicy(self.tokenizer)
        self.vocab = model.get_output_embeddings().out_features

    @classmethod
    def of(cls, model, processor, pool: KVPool | None = None, *, page_size: int = PAGE_SIZE,
           cuda_graphs: bool = True) -> StreamEngine:
        """The engine of ``pool`` (one is made for a new pool), shared by every stream on it."""
        if pool is None:
            pool = KVPool.for_model(model, page_size=page_size)
        engine = _ENGINES.get(pool)
        if engine is None or engine.model is not model:
            engine = _ENGINES[pool] = cls(model, processor, pool, cuda_graphs=cuda_graphs)
        return engine

    def compile_vision(self) -> None:
        self.runner.compile_vision()

    def warm_up(self, max_streams: int, max_tokens: int, compile_vision: bool = False,
                compile_ahead: bool = True) -> dict[str, float]:
        """What a first window would wait for, done now and timed (seconds per part): on a GPU the
        kernels of the windows compiled in parallel processes (``compile_ahead``; Triton's cache
        then serves this process), with ``compile_vision`` the ViT's blocks compiled, then
        :meth:`ModelRunner.warm_up` (the pool, and the prefill and decode graphs)."""
        t0 = time.perf_counter()
        if compile_ahead:
            self.runner.compile_ahead()
        t1 = time.perf_counter()
        if compile_vision:
            self.runner.compile_vision()
        self.runner.warm_up(max_streams, max_tokens)
        return {"compile_s": t1 - t0, "graphs_s": time.perf_counter() - t1}

    # ------------------------------------------------------------------ streams

    def open(self, config: SessionConfig = SessionConfig(), trace: bool = False) -> StreamState:
        if config.query:
            config = replace(config, query=self.policy.check_text(config.query, "the query", MAX_QUERY_TOKENS))
        generator = torch.Generator(device=self.device).manual_seed(config.seed)
        return StreamState(config=config, cache=StreamKVCache(self.pool),
                           seen=torch.zeros(self.vocab, dtype=torch.bool, device=self.device),
                           penalty=torch.tensor(config.repetition_penalty, device=self.device), generator=generator,
                           video=VideoFormat.of(self.model.config, self.spec.temporal_patch_size,
                                                config.plan.fps),
                           trace=Trace() if trace else None)

    def close(self, stream: StreamState) -> None:
        """End a stream: its pages go back to the pool at once."""
        stream.cache.close()

    def ask(self, stream: StreamState, question: str) -> None:
        """Put ``question`` into the stream's next window's user turn; a ValueError (and nothing
        fed) for one that is not plain text within :data:`MAX_QUESTION_TOKENS` tokens."""
        question = self.policy.check_text(question, "a question", MAX_QUESTION_TOKENS)
        if question:
            stream.questions.append(question)

    def check_frames(self, stream: StreamState, frames: torch.Tensor) -> tuple[int, int]:
        """The size a window's frames are resized to, or a ValueError naming what is wrong with them
        (checked before a window joins a batch, so a bad one fails only its own stream)."""
        if not isinstance(frames, torch.Tensor) or frames.ndim != 4 or frames.shape[0] == 0 or frames.shape[-1] != 3 \
                or frames.dtype != torch.uint8:
            shape = tuple(frames.shape) if isinstance(frames, torch.Tensor) else type(frames).__name__
            raise ValueError(f"expected uint8 frames [T, H, W, 3], got {shape}")
        h, w = frames.shape[1:3]
        return smart_resize(h, w, self.spec.factor, stream.config.min_pixels, stream.config.max_pixels)

    # ------------------------------------------------------------------ one window

    @torch.no_grad()
    def step(self, streams: list[StreamState], windows: list[FrameWindow | torch.Tensor],
             force_texts: list[str | None] | None = None) -> list[WindowResult]:
        """One window for each stream (``windows[i]`` for ``streams[i]``: a :class:`FrameWindow` with
        its own times, or bare uint8 frames ``[T, H, W, 3]`` that follow the stream's last window);
        ``force_texts`` feeds given answers instead of decoding (teacher forcing). The timings of
        each result are those of the shared phases."""
        force_texts = force_texts or [None] * len(streams)
        if not (len(streams) == len(windows) == len(force_texts)) or not streams:
            raise ValueError("a step needs one window of frames (and force text) per stream")
        if len({id(s) for s in streams}) < len(streams) or any(s.cache.pool is not self.pool for s in streams):
            raise ValueError("each stream is stepped once per call, and all on this engine's pool")
        windows = [w if isinstance(w, FrameWindow) else
                   FrameWindow(w, s.window_index, s.clock, s.clock + len(w) / s.config.plan.fps)
                   for s, w in zip(streams, windows)]
        for s, w in zip(streams, windows):
            self.check_frames(s, w.frames)
        saved = [_Saved(s) for s in streams]
        clock = _PhaseClock(self.device)
        try:
            visual = self.encode(streams, [w.frames for w in windows], clock)
            clock.mark()
            asked = [list(s.questions) for s in streams]
            ids, logits = self._prefill(streams, windows, visual)
            clock.mark()
            forced = [None if t is None else self.tokenizer(t, add_special_tokens=False).input_ids
                      for t in force_texts]
            generated = self._decode(streams, logits, [w.end for w in windows], forced)
            clock.mark()
        except BaseException:  # nothing of this window stays: each stream is as it was before it
            for sv in saved:
                sv.restore()
            raise
        evicted = [self._evict(s, w.end) for s, w in zip(streams, windows)]
        clock.mark()
        preprocess, vision, prefill, decode, evict = clock.milliseconds()
        timings = {"preprocess": preprocess, "vision": vision, "prefill": prefill, "decode": decode, "evict": evict,
                   "total": preprocess + vision + prefill + decode + evict}
        return [self._finish(s, w, g, dict(timings), int(t.numel()), e, a)
                for s, w, g, t, e, a in zip(streams, windows, generated, ids, evicted, asked)]

    def encode(self, streams: list[StreamState], frames: list[torch.Tensor], clock: _PhaseClock | None = None):
        """One ViT call over every stream's window of frames -> per stream (visual embeds, their
        DeepStack features, pixel rows, grid); a window's ``clock`` is marked where the frames'
        preprocessing ends."""
        sizes = [self.check_frames(s, f) for s, f in zip(streams, frames)]
        patches = [preprocess_frames(upload(f, self.device), size, self.spec, self.dtype)[0]
                   for f, size in zip(frames, sizes)]
        if clock is not None:
            clock.mark()
        grids = [self.spec.thw(len(f), size) for f, size in zip(frames, sizes)]
        encoded = self.runner.encode(torch.cat(patches), grids)
        return [(e, deep, p, torch.tensor([g])) for (e, deep), p, g in zip(encoded, patches, grids)]

    def _prefill(self, streams, windows, visual):
        """Every stream's user turn (with its frames' embeddings) in one packed forward over the
        caches -> (the ids fed per stream, the logits after each stream's last token). The round's
        ids, visual rows and last rows go to the device in one copy."""
        ids, positions, metas = [], [], []
        for s, window, (_, _, pixel_values, grid) in zip(streams, windows, visual):
            turn, pos, kinds, lo, hi = self.policy.prompt(s, window.start, window.end, len(window.frames), grid)
            ids.append(turn), positions.append(pos), metas.append((kinds, lo, hi))
            if s.trace is not None:
                s.trace.pixel_values.append(pixel_values.cpu())
                s.trace.grids.append(grid)
        counts = [t.numel() for t in ids]
        fed = torch.cat(ids)
        rows = (fed == self.policy.ids.video_pad).nonzero().flatten()  # found on the host
        last = torch.tensor(counts).cumsum(0) - 1
        fed_dev, rows_dev, last_dev = upload(torch.cat([fed, rows, last]), self.device).split(
            [fed.numel(), rows.numel(), last.numel()])
        embeds = self.runner.embed(fed_dev)
        embeds.index_copy_(0, rows_dev, torch.cat([v[0] for v in visual]).to(embeds.dtype))
        for s, turn in zip(streams, fed_dev.split(counts)):
            s.seen[turn] = True
        deep = None
        if visual[0][1]:  # DeepStack: earlier ViT blocks' features, added at the new visual rows only
            deep = embeds.new_zeros((len(visual[0][1]), *embeds.shape))
            deep[:, rows_dev] = torch.stack([torch.cat(layer) for layer in zip(*(v[1] for v in visual))]).to(
                embeds.dtype)
        logits = self.runner.prefill([s.cache for s in streams], embeds, torch.cat(positions, dim=1), counts,
                                     last_dev, deep)
        return ids, self._record(streams, ids, positions, [w.end for w in windows], metas, logits)

    def _decode(self, streams: list[StreamState], logits: list[torch.Tensor], times: list[float],
                forced: list[list[int] | None]) -> list[list[int]]:
        """Decode every stream until its stop token or limit; the streams still talking share each
        step, and each step reads the host once, for all of them."""
        generated: list[list[int]] = [[] for _ in streams]
        talking = list(range(len(streams)))
        while True:
            free = [i for i in talking if forced[i] is None]
            chosen = self.policy.choose([streams[i] for i in free], torch.stack([logits[i] for i in free])).tolist() \
                if free else []  # the one host read of the step
            picks = dict(zip(free, chosen))
            still = []
            for i in talking:
                out, f = generated[i], forced[i]
                out.append(picks[i] if f is None else (f[len(out)] if len(out) < len(f) else self.policy.stream_eos))
                limit = streams[i].config.max_new_tokens if f is None else len(f) + 1
                if out[-1] not in self.policy.stops and len(out) < limit:
                    still.append(i)
            if not still:
                return generated
            rows = self._decode_step([streams[i] for i in still], [generated[i][-1] for i in still],
                                     [times[i] for i in still])
            for i, row in zip(still, rows):
                logits[i] = row
            talking = still

    def _decode_step(self, streams: list[StreamState], tokens: list[int], times: list[float]) -> list[torch.Tensor]:
        """Feed one token per stream -> each stream's next-token logits."""
        starts = [s.next_pos for s in streams]
        metas = [self.policy.text_positions(s, 1) for s in streams]
        for s, token in zip(streams, tokens):
            s.seen[token] = True
        logits = self.runner.decode([s.cache for s in streams], tokens, starts)
        return self._record(streams, [torch.tensor([t]) for t in tokens], [m[0] for m in metas], times,
                            [(TEXT, lo, hi) for _, lo, hi in metas], logits)

    def _record(self, streams, ids, positions, times, metas, logits: torch.Tensor) -> list[torch.Tensor]:
        """Commit the tokens just written to each stream's cache (and its trace); return its logits."""
        for s, t, pos, when, (kind, lo, hi), row in zip(streams, ids, positions, times, metas, logits):
            s.cache.commit(t.numel(), kind, when, lo, hi)
            if s.trace is not None:
                s.trace.ids.append(t.cpu())
                s.trace.positions.append(pos.cpu())
                s.trace.logits.append((s.cache.fed - 1, row.cpu()))
        return list(logits)

    def _evict(self, s: StreamState, now: float) -> int:
        """Drop what the stream's bounds no longer keep; once enough positions are free, the
        survivors move down to close the gaps (keys re-rotated) and new tokens follow them."""
        drop = self.policy.evictions(s, now)
        if s.trace is not None and drop.any():
            s.trace.evictions.append((s.cache.fed, s.cache.origin[: s.cache.length][drop].clone()))
        evicted = s.cache.evict(drop)
        compaction = self.policy.compaction(s)
        if compaction is not None:
            moved, free = compaction
            if s.trace is not None:
                s.trace.moves.append((s.cache.fed, s.cache.origin[: s.cache.length].clone(), moved.clone()))
            self.runner.move_keys(s.cache, moved)
            s.cache.shift(moved)
            s.next_pos -= free
        return evicted

    def _finish(self, s: StreamState, window: FrameWindow, generated: list[int], timings: dict[str, float],
                prefill_tokens: int, evicted: int, asked: list[str]) -> WindowResult:
        s.pending = self.policy.closing(generated)
        s.clock = window.end
        s.window_index += 1
        return WindowResult(index=s.window_index - 1, start=window.start, end=window.end,
                            text=self.policy.text(generated), token_ids=generated, timings=timings,
                            prefill_tokens=prefill_tokens, cache_tokens=s.cache.length, evicted_tokens=evicted,
                            next_position=s.next_pos, asked=asked)
