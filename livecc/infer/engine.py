"""The streaming engine: one model, one KV pool, many streams, stepped together a window at a time.

A window of every stream goes ``encode`` (one ViT call over all their frames) -> ``prefill`` (one
packed forward of all their new tokens over their caches) -> ``decode`` (batched steps over the
streams still talking, replayed as CUDA graphs on GPU) -> ``evict`` (visual tokens past each
stream's horizon). Each window is one user turn (``Time=a-b s`` + its frames, the query on the first
turn and any question asked since), prefilled with M-RoPE positions continuing the cache; the answer
runs until the streaming EOS ``' ...'``, ``<|im_end|>`` or ``max_new_tokens``, stays in the cache
and is closed (``' ...<|im_end|>\\n'``) at the start of the next window, so the cache always holds
exactly the training format.

The decode loop reads the host once per step for all streams (the chosen tokens: the repetition
penalty, argmax and sampling run on the device over a per-stream bitmap of the tokens fed), and
detokenizes after the window. A stream's state is a plain :class:`StreamState`; each keeps its own
clock, positions, sampling state and cache, so its output is the one it would produce alone.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from ..data.sequence import Window
from ..kernels import preprocess_frames
from ..qwen2vl import (
    SYSTEM_TURN,
    TokenIds,
    VisionSpec,
    expand_pads,
    mrope_position_ids,
    rope_time_interval,
    smart_resize,
    user_turn,
)
from .cache import TEXT, VISION, KVPool, StreamKVCache
from .config import SessionConfig
from .decoder import forward_tokens
from .graphs import DecodeGraphs, PrefillGraphs

__all__ = ["StreamEngine", "StreamState", "Trace", "WindowResult"]


@dataclass
class WindowResult:
    index: int
    start: float  # stream seconds
    end: float
    text: str  # the commentary of this window, without the streaming EOS
    token_ids: list[int]
    timings: dict[str, float]  # milliseconds: vision, prefill, decode, evict, total
    prefill_tokens: int
    cache_tokens: int
    evicted_tokens: int = 0

    @property
    def tokens_per_s(self) -> float:
        """Tokens generated per second of decoding (the first comes from the prefill's logits)."""
        ms = self.timings["decode"]
        return len(self.token_ids) * 1e3 / ms if ms > 0 else float("nan")


@dataclass
class Trace:
    """What a stream fed and predicted, for checking it against one full forward pass."""

    ids: list[torch.Tensor] = field(default_factory=list)
    positions: list[torch.Tensor] = field(default_factory=list)
    pixel_values: list[torch.Tensor] = field(default_factory=list)
    grids: list[torch.Tensor] = field(default_factory=list)
    logits: list[tuple[int, torch.Tensor]] = field(default_factory=list)  # (fed index, logits)
    evictions: list[tuple[int, torch.Tensor]] = field(default_factory=list)  # (tokens fed by then, origins)


@dataclass
class StreamState:
    """One stream: its settings, cache and where it stands."""

    config: SessionConfig
    cache: StreamKVCache
    seen: torch.Tensor  # bool [V] on the device: token ids fed so far, for the repetition penalty
    penalty: torch.Tensor  # the repetition penalty, a scalar on the device (no copy per decode step)
    generator: torch.Generator
    time_interval: float  # M-RoPE temporal step per frame pair (Qwen2.5-VL spaces them by seconds)
    next_pos: int = 0
    clock: float = 0.0  # stream seconds covered so far
    window_index: int = 0
    pending: list[int] = field(default_factory=list)  # closes the previous answer; fed with the next window
    questions: list[str] = field(default_factory=list)  # asked since the last window; fed with the next
    trace: Trace | None = None

    @property
    def frames_needed(self) -> int:
        return self.config.initial_frames if self.window_index == 0 else self.config.streaming_frames


class _PhaseClock:
    """Phase boundaries of a window: CUDA events on GPU (read once, at the window's end), else wall time."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.marks: list = []
        self.mark()

    def mark(self) -> None:
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            self.marks.append(event)
        else:
            self.marks.append(time.perf_counter())

    def milliseconds(self) -> list[float]:
        if self.cuda:
            self.marks[-1].synchronize()
            return [a.elapsed_time(b) for a, b in zip(self.marks, self.marks[1:])]
        return [(b - a) * 1e3 for a, b in zip(self.marks, self.marks[1:])]


class StreamEngine:
    """The model, its KV pool and decode graphs, and the four phases over a batch of streams."""

    def __init__(self, model, processor, pool: KVPool, *, cuda_graphs: bool = True):
        self.model = model.eval()
        param = next(model.parameters())
        self.device, self.dtype = param.device, param.dtype
        self.tokenizer = getattr(processor, "tokenizer", processor)
        self.ids = TokenIds.from_tokenizer(self.tokenizer)
        self.spec = VisionSpec.from_processor(processor)
        eos = self.tokenizer(" ...", add_special_tokens=False).input_ids
        if len(eos) != 1:
            raise ValueError("the tokenizer does not encode the streaming EOS ' ...' as one token")
        self.stream_eos = eos[0]
        self.stops = (self.stream_eos, self.ids.im_end)
        self.vocab = model.get_output_embeddings().out_features
        self.pool = pool
        # Decode steps and prefills replay CUDA graphs on GPU; elsewhere they run eagerly through forward_tokens.
        # An fp32 prefill attends through SDPA per stream (host reads of the lengths): not capturable.
        graphs = cuda_graphs and self.device.type == "cuda"
        self.decode_graphs = DecodeGraphs.of(model, pool) if graphs else None
        self.prefill_graphs = PrefillGraphs.of(model, pool) if graphs and self.dtype != torch.float32 else None

    @classmethod
    def of(cls, model, processor, pool: KVPool | None = None, *, page_size: int = 64,
           cuda_graphs: bool = True) -> StreamEngine:
        """The engine of ``pool`` (one is made for a new pool), shared by every stream on it."""
        if pool is None:
            pool = KVPool.for_model(model, page_size=page_size)
        if pool.engine is None or pool.engine.model is not model:
            pool.engine = cls(model, processor, pool, cuda_graphs=cuda_graphs)
        return pool.engine

    def compile_vision(self) -> None:
        """Compile each ViT block (regional ``torch.compile``, shapes dynamic: one graph serves every
        frame size and every block), fusing its norms, rotary embedding and MLP around livecc's
        attention op. The first windows pay the compile time; ``warm_up`` can take it instead."""
        for block in self.model.model.visual.blocks:
            block.compile(dynamic=True)

    def warm_up(self, max_streams: int, max_tokens: int, compile_vision: bool = False) -> None:
        """Allocate the pool for ``max_streams`` streams of up to ``max_tokens`` cached tokens each and
        build the decode steps of every batch size up to ``max_streams`` and the prefill of every
        bucket now, so that neither a pool reallocation nor a graph capture lands inside a window
        (within those bounds). ``compile_vision`` compiles the ViT's blocks too."""
        if compile_vision:
            self.compile_vision()
        pages = -(-max_tokens // self.pool.page_size)
        self.pool.ensure(max_streams * pages + 1)  # + the prefill's scratch page
        if self.prefill_graphs is not None:
            self.prefill_graphs.prepare(max_streams, pages)
        if self.decode_graphs is not None:
            self.decode_graphs.prepare(max_streams, pages)

    # ------------------------------------------------------------------ streams

    def open(self, config: SessionConfig = SessionConfig(), trace: bool = False) -> StreamState:
        generator = torch.Generator(device=self.device).manual_seed(config.seed)
        return StreamState(config=config, cache=StreamKVCache(self.pool),
                           seen=torch.zeros(self.vocab, dtype=torch.bool, device=self.device),
                           penalty=torch.tensor(config.repetition_penalty, device=self.device), generator=generator,
                           time_interval=rope_time_interval(self.model.config, self.spec.temporal_patch_size,
                                                            config.fps),
                           trace=Trace() if trace else None)

    def close(self, stream: StreamState) -> None:
        """End a stream: its pages go back to the pool at once."""
        stream.cache.close()

    def ask(self, stream: StreamState, question: str) -> None:
        """Put ``question`` into the stream's next window's user turn (its positions continue the cache)."""
        if question.strip():
            stream.questions.append(question.strip())

    # ------------------------------------------------------------------ one window

    @torch.no_grad()
    def step(self, streams: list[StreamState], frames: list[torch.Tensor],
             force_texts: list[str | None] | None = None) -> list[WindowResult]:
        """One window for each stream (``frames[i]`` uint8 ``[T, H, W, 3]`` for ``streams[i]``);
        ``force_texts`` feeds given answers instead of decoding (teacher forcing). The timings of
        each result are those of the shared phases."""
        force_texts = force_texts or [None] * len(streams)
        if not (len(streams) == len(frames) == len(force_texts)) or not streams:
            raise ValueError("a step needs one window of frames (and force text) per stream")
        if len({id(s) for s in streams}) < len(streams) or any(s.cache.pool is not self.pool for s in streams):
            raise ValueError("each stream is stepped once per call, and all on this engine's pool")
        clock = _PhaseClock(self.device)
        windows = [Window(slice(0, len(f)), s.clock, s.clock + len(f) / s.config.fps) for s, f in zip(streams, frames)]
        visual = self.encode(streams, frames)
        clock.mark()
        ids, logits = self.prefill(streams, windows, visual)
        clock.mark()
        forced = [None if t is None else self.tokenizer(t, add_special_tokens=False).input_ids for t in force_texts]
        generated = self.decode(streams, logits, [w.end for w in windows], forced)
        clock.mark()
        evicted = self.evict(streams, [w.end for w in windows])
        clock.mark()
        vision, prefill, decode, evict = clock.milliseconds()
        timings = {"vision": vision, "prefill": prefill, "decode": decode, "evict": evict,
                   "total": vision + prefill + decode + evict}
        return [self._finish(s, w, g, dict(timings), int(t.numel()), e)
                for s, w, g, t, e in zip(streams, windows, generated, ids, evicted)]

    def encode(self, streams: list[StreamState], frames: list[torch.Tensor]):
        """One ViT call over every stream's window -> per stream (visual embeds, pixel rows, grid)."""
        patches = [self._patches(s, f) for s, f in zip(streams, frames)]
        pixel_values, grids = torch.cat([p for p, _ in patches]), torch.cat([g for _, g in patches])
        out = self.model.model.visual(pixel_values, grid_thw=grids.to(self.device))
        embeds = getattr(out, "pooler_output", out)
        sizes = [int(g.prod()) // self.spec.merge_size**2 for g in grids]
        return [(e, p, g[None]) for e, (p, _), g in zip(embeds.split(sizes), patches, grids)]

    def prefill(self, streams: list[StreamState], windows: list[Window], visual):
        """Every stream's user turn (with its frames' embeddings) in one packed forward over the
        caches -> (the ids fed per stream, the logits after each stream's last token)."""
        ids, positions, embeds, kinds = [], [], [], []
        for s, window, (embeds_v, pixel_values, grid) in zip(streams, windows, visual):
            turn, pos = self._prompt(s, window, grid)
            turn_dev = turn.to(self.device)
            e = self.model.get_input_embeddings()(turn_dev)
            pads = (turn == self.ids.video_pad).nonzero().flatten().to(self.device)  # found on the host: no sync
            e.index_copy_(0, pads, embeds_v.to(e.dtype))
            ids.append(turn), positions.append(pos), embeds.append(e)
            kinds.append((turn == self.ids.video_pad).to(torch.int8))
            s.seen[turn_dev] = True
            if s.trace is not None:
                s.trace.pixel_values.append(pixel_values.cpu())
                s.trace.grids.append(grid)
        counts = [t.numel() for t in ids]
        caches, embeds, positions_all = [s.cache for s in streams], torch.cat(embeds), torch.cat(positions, dim=1)
        if self.prefill_graphs is not None and self.prefill_graphs.fits(counts):
            hidden = self.prefill_graphs.run(caches, embeds, positions_all, counts)
        else:
            hidden = forward_tokens(self.model, embeds, positions_all, caches, counts)
        last = (torch.tensor(counts).cumsum(0) - 1).to(hidden.device)
        logits = self.model.lm_head(hidden[last]).float()
        return ids, self._record(streams, ids, positions, [w.end for w in windows], kinds, logits)

    def decode(self, streams: list[StreamState], logits: list[torch.Tensor], times: list[float],
               forced: list[list[int] | None]) -> list[list[int]]:
        """Decode every stream until its stop token or limit; the streams still talking share each
        step, and each step reads the host once, for all of them."""
        generated: list[list[int]] = [[] for _ in streams]
        talking = list(range(len(streams)))
        while True:
            free = [i for i in talking if forced[i] is None]
            chosen = self.choose([streams[i] for i in free], torch.stack([logits[i] for i in free])).tolist() \
                if free else []  # the one host read of the step
            picks = dict(zip(free, chosen))
            still = []
            for i in talking:
                out, f = generated[i], forced[i]
                out.append(picks[i] if f is None else (f[len(out)] if len(out) < len(f) else self.stream_eos))
                limit = streams[i].config.max_new_tokens if f is None else len(f) + 1
                if out[-1] not in self.stops and len(out) < limit:
                    still.append(i)
            if not still:
                return generated
            rows = self.decode_step([streams[i] for i in still], [generated[i][-1] for i in still],
                                    [times[i] for i in still])
            for i, row in zip(still, rows):
                logits[i] = row
            talking = still

    def decode_step(self, streams: list[StreamState], tokens: list[int], times: list[float]) -> list[torch.Tensor]:
        """Feed one token per stream -> each stream's next-token logits."""
        starts = [s.next_pos for s in streams]
        for s, token in zip(streams, tokens):
            s.next_pos += 1
            s.seen[token] = True
        ids = [torch.tensor([t]) for t in tokens]
        positions = [torch.full((3, 1), p, dtype=torch.long) for p in starts]
        kinds = [TEXT] * len(streams)
        if self.decode_graphs is not None:
            logits = self.decode_graphs.step([s.cache for s in streams], tokens, starts)
        else:
            embeds = self.model.get_input_embeddings()(torch.tensor(tokens, device=self.device))
            hidden = forward_tokens(self.model, embeds, torch.cat(positions, dim=1), [s.cache for s in streams],
                                    [1] * len(streams))
            logits = self.model.lm_head(hidden).float()
        return self._record(streams, ids, positions, times, kinds, logits)

    def choose(self, streams: list[StreamState], logits: torch.Tensor) -> torch.Tensor:
        """The next token of each stream ``[B]`` (on the device) from its logits ``[B, V]``: the
        repetition penalty over the tokens it has fed, then argmax, or sampling at its temperature."""
        penalty = torch.stack([s.penalty for s in streams])[:, None]
        seen = torch.stack([s.seen for s in streams])
        logits = torch.where(seen, torch.where(logits > 0, logits / penalty, logits * penalty), logits)
        tokens = logits.argmax(dim=-1)
        for k, s in enumerate(streams):
            if s.config.temperature > 0:
                probs = torch.softmax(logits[k] / s.config.temperature, dim=-1)
                tokens[k] = torch.multinomial(probs, 1, generator=s.generator)[0]
        return tokens

    def evict(self, streams: list[StreamState], now: list[float]) -> list[int]:
        """Drop each stream's visual tokens older than its horizon (and old text past its cap)."""
        return [self._evict(s, t) for s, t in zip(streams, now)]

    # ------------------------------------------------------------------ per stream

    def _patches(self, s: StreamState, frames: torch.Tensor):
        if frames.ndim != 4 or frames.shape[0] == 0:
            raise ValueError(f"expected uint8 frames [T, H, W, 3], got {tuple(frames.shape)}")
        h, w = frames.shape[1:3]
        size = smart_resize(h, w, self.spec.factor, s.config.min_pixels, s.config.max_pixels)
        return preprocess_frames(frames.to(self.device), size, self.spec, self.dtype)

    def _prompt(self, s: StreamState, window: Window, grid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The window's user turn (after the closing of the previous answer) and its positions."""
        head = SYSTEM_TURN if s.window_index == 0 else ""
        asked = ([s.config.query] if s.window_index == 0 and s.config.query else []) + s.questions
        s.questions = []
        text = head + user_turn(window.start, window.end, "\n".join(asked)) + "<|im_start|>assistant\n"
        ids = torch.tensor(s.pending + self.tokenizer(text, add_special_tokens=False).input_ids)
        ids = expand_pads(ids, self.ids.video_pad, [int(grid.prod()) // self.spec.merge_size**2])
        positions, s.next_pos = mrope_position_ids(ids, grid, (self.ids.video_pad,), self.spec.merge_size,
                                                   start=s.next_pos, time_interval=s.time_interval)
        return ids, positions

    def _record(self, streams, ids, positions, times, kinds, logits: torch.Tensor) -> list[torch.Tensor]:
        """Commit the tokens just written to each stream's cache (and its trace); return its logits."""
        for s, t, pos, when, kind, row in zip(streams, ids, positions, times, kinds, logits):
            s.cache.commit(t.numel(), kind, when)
            if s.trace is not None:
                s.trace.ids.append(t.cpu())
                s.trace.positions.append(pos.cpu())
                s.trace.logits.append((s.cache.fed - 1, row.cpu()))
        return list(logits)

    def _evict(self, s: StreamState, now: float) -> int:
        cache, config = s.cache, s.config
        n = cache.length
        kind, when = cache.kind[:n], cache.time[:n]
        drop = (kind == VISION) & (when <= now - config.horizon)
        if config.max_text_tokens is not None:
            text_slots = (kind == TEXT).nonzero().flatten()
            text_slots = text_slots[cache.origin[text_slots].argsort()]  # slots are not in fed order
            old = text_slots[config.text_sink : max(config.text_sink, text_slots.numel() - config.max_text_tokens)]
            drop[old] = True
        if s.trace is not None and drop.any():
            s.trace.evictions.append((cache.fed, cache.origin[:n][drop].clone()))
        return cache.evict(drop)

    def _closing(self, generated: list[int]) -> list[int]:
        """Tokens that end this answer in the training format: ``... ...<|im_end|>\\n``."""
        newline = [self.ids.newline]
        last = generated[-1]
        if last == self.ids.im_end:
            return [last, *newline]
        if last == self.stream_eos:
            return [last, self.ids.im_end, *newline]
        return [last, self.stream_eos, self.ids.im_end, *newline]

    def _finish(self, s: StreamState, window: Window, generated: list[int], timings: dict[str, float],
                prefill_tokens: int, evicted: int) -> WindowResult:
        s.pending = self._closing(generated)
        s.clock = window.end
        s.window_index += 1
        answer = [t for t in generated if t not in self.stops]
        return WindowResult(
            index=s.window_index - 1, start=window.start, end=window.end,
            text=self.tokenizer.decode(answer).strip(), token_ids=generated, timings=timings,
            prefill_tokens=prefill_tokens, cache_tokens=s.cache.length, evicted_tokens=evicted,
        )
