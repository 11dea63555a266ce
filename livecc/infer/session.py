"""A streaming commentary session: one paged KV cache, one window at a time, no re-tokenization.

Each window (3 s first, then 1 s at 2 FPS) is one user turn (``Time=a-b s`` + its frames + the
query on the first turn) prefilled on top of the cache with M-RoPE positions continuing from it,
then decoded until the streaming EOS ``' ...'``, ``<|im_end|>`` or ``max_new_tokens``. The answer
stays in the cache and is closed (``' ...<|im_end|>\\n'``) at the start of the next window, so
the cache always holds exactly the training format. Visual tokens older than ``horizon`` seconds
are evicted; text stays (optionally capped to a sink plus the most recent tokens).

``step_streams`` steps several sessions (sharing a model and a ``KVPool``) together: one ViT call
for all their frames, one packed prefill, and decode steps batched over the streams still talking.
Each stream keeps its own clock, positions, sampling state and cache, so its output is the one it
would produce alone.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from ..data.sequence import Window
from ..data.video import FPS
from ..kernels import preprocess_frames
from ..qwen2vl import (
    SYSTEM_TURN,
    TokenIds,
    VisionSpec,
    expand_video_pads,
    mrope_position_ids,
    rope_time_interval,
    smart_resize,
    user_turn,
)
from .cache import TEXT, VISION, KVPool, StreamKVCache
from .decoder import forward_tokens
from .graphs import DecodeGraphs

__all__ = ["StreamingSession", "WindowResult", "step_streams"]


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
    """What a session fed and predicted, for checking it against one full forward pass."""

    ids: list[torch.Tensor] = field(default_factory=list)
    positions: list[torch.Tensor] = field(default_factory=list)
    pixel_values: list[torch.Tensor] = field(default_factory=list)
    grids: list[torch.Tensor] = field(default_factory=list)
    logits: list[tuple[int, torch.Tensor]] = field(default_factory=list)  # (fed index, logits)
    evictions: list[tuple[int, torch.Tensor]] = field(default_factory=list)  # (tokens fed by then, origins)


class StreamingSession:
    def __init__(
        self,
        model,
        processor,
        query: str = "",
        *,
        max_new_tokens: int = 16,
        repetition_penalty: float = 1.05,
        temperature: float = 0.0,
        horizon: float = 240.0,
        text_sink: int = 0,
        max_text_tokens: int | None = None,
        min_pixels: int = 100 * 28 * 28,
        max_pixels: int = 384 * 28 * 28,
        initial_frames: int = 6,
        streaming_frames: int = 2,
        fps: float = FPS,
        seed: int = 0,
        trace: bool = False,
        pool: KVPool | None = None,
        page_size: int = 64,
        cuda_graphs: bool = True,
    ):
        self.model = model.eval()
        param = next(model.parameters())
        self.device, self.dtype = param.device, param.dtype
        self.tokenizer = getattr(processor, "tokenizer", processor)
        self.ids = TokenIds.from_tokenizer(self.tokenizer)
        self.spec = VisionSpec.from_processor(processor)
        self.time_interval = rope_time_interval(model.config, self.spec.temporal_patch_size, fps)
        eos = self.tokenizer(" ...", add_special_tokens=False).input_ids
        if len(eos) != 1:
            raise ValueError("the tokenizer does not encode the streaming EOS ' ...' as one token")
        self.stream_eos = eos[0]
        self.query = query
        self.max_new_tokens, self.repetition_penalty, self.temperature = max_new_tokens, repetition_penalty, temperature
        self.horizon, self.text_sink, self.max_text_tokens = horizon, text_sink, max_text_tokens
        self.min_pixels, self.max_pixels = min_pixels, max_pixels
        self.initial_frames, self.streaming_frames, self.fps = initial_frames, streaming_frames, fps
        self.stops = (self.stream_eos, self.ids.im_end)
        self.cache = StreamKVCache(pool if pool is not None else KVPool.for_model(model, page_size=page_size))
        # Decode steps replay CUDA graphs on GPU; elsewhere they run eagerly through forward_tokens.
        graphs = cuda_graphs and self.device.type == "cuda"
        self.decode_graphs = DecodeGraphs.of(model, self.cache.pool) if graphs else None
        self.seen: set[int] = set()  # token ids fed so far, for the repetition penalty
        self.generator = torch.Generator(device=self.device).manual_seed(seed)
        self.next_pos = 0
        self.clock = 0.0  # stream seconds covered so far
        self.window_index = 0
        self.pending: list[int] = []  # closes the previous answer; fed with the next window
        self.trace = Trace() if trace else None

    @property
    def frames_needed(self) -> int:
        return self.initial_frames if self.window_index == 0 else self.streaming_frames

    def skip(self, seconds: float) -> None:
        """Advance the stream clock over dropped windows, so ``Time=`` keeps matching the stream."""
        self.clock += seconds

    def step(self, frames: torch.Tensor, force_text: str | None = None) -> WindowResult:
        """Comment on one window of uint8 frames ``[T, H, W, 3]``; ``force_text`` feeds a given
        answer instead of decoding one (teacher forcing)."""
        return step_streams([self], [frames], [force_text])[0]

    def close(self) -> None:
        """End the stream: its pages go back to the pool."""
        self.cache.close()

    def _patches(self, frames: torch.Tensor):
        if frames.ndim != 4 or frames.shape[0] == 0:
            raise ValueError(f"expected uint8 frames [T, H, W, 3], got {tuple(frames.shape)}")
        h, w = frames.shape[1:3]
        size = smart_resize(h, w, self.spec.factor, self.min_pixels, self.max_pixels)
        return preprocess_frames(frames.to(self.device), size, self.spec, self.dtype)

    def _prompt(self, window: Window, grid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The window's user turn (after the closing of the previous answer) and its positions."""
        head = SYSTEM_TURN if self.window_index == 0 else ""
        query = self.query if self.window_index == 0 else ""
        text = head + user_turn(window.start, window.end, query) + "<|im_start|>assistant\n"
        ids = torch.tensor(self.pending + self.tokenizer(text, add_special_tokens=False).input_ids)
        ids = expand_video_pads(ids, self.ids.video_pad, [int(grid.prod()) // self.spec.merge_size**2])
        positions, self.next_pos = mrope_position_ids(ids, grid, (self.ids.video_pad,), self.spec.merge_size,
                                                      start=self.next_pos, time_interval=self.time_interval)
        return ids, positions

    def _choose(self, logits: torch.Tensor) -> int:
        if self.repetition_penalty != 1.0 and self.seen:
            index = torch.tensor(list(self.seen), device=logits.device)
            seen = logits[index]
            logits = logits.clone()
            logits[index] = torch.where(seen > 0, seen / self.repetition_penalty, seen * self.repetition_penalty)
        if self.temperature <= 0:
            return int(logits.argmax())
        probs = torch.softmax(logits / self.temperature, dim=-1)
        return int(torch.multinomial(probs, 1, generator=self.generator))

    def _closing(self, generated: list[int]) -> list[int]:
        """Tokens that end this answer in the training format: ``... ...<|im_end|>\\n``."""
        newline = [self.ids.newline]
        last = generated[-1]
        if last == self.ids.im_end:
            return [last, *newline]
        if last == self.stream_eos:
            return [last, self.ids.im_end, *newline]
        return [last, self.stream_eos, self.ids.im_end, *newline]

    def _evict(self, now: float) -> int:
        n = self.cache.length
        kind, when = self.cache.kind[:n], self.cache.time[:n]
        drop = (kind == VISION) & (when <= now - self.horizon)
        if self.max_text_tokens is not None:
            text_slots = (kind == TEXT).nonzero().flatten()
            text_slots = text_slots[self.cache.origin[text_slots].argsort()]  # slots are not in fed order
            old = text_slots[self.text_sink : max(self.text_sink, text_slots.numel() - self.max_text_tokens)]
            drop[old] = True
        if self.trace is not None and drop.any():
            self.trace.evictions.append((self.cache.fed, self.cache.origin[:n][drop].clone()))
        return self.cache.evict(drop)

    def _finish(self, window: Window, generated: list[int], timings: dict[str, float], prefill_tokens: int,
                evicted: int):
        self.pending = self._closing(generated)
        self.clock = window.end
        self.window_index += 1
        answer = [t for t in generated if t not in self.stops]
        return WindowResult(
            index=self.window_index - 1, start=window.start, end=window.end,
            text=self.tokenizer.decode(answer).strip(), token_ids=generated, timings=timings,
            prefill_tokens=prefill_tokens, cache_tokens=self.cache.length, evicted_tokens=evicted,
        )


def _feed(sessions: list[StreamingSession], ids: list[torch.Tensor], positions: list[torch.Tensor],
          embeds: torch.Tensor, times: list[float], kinds: list) -> list[torch.Tensor]:
    """Run each session's ``ids`` through the LLM on top of its cache, all in one batch; return the
    logits after each session's last token."""
    lead = sessions[0]
    counts = [t.numel() for t in ids]
    hidden = forward_tokens(lead.model, embeds, torch.cat(positions, dim=1), [s.cache for s in sessions], counts)
    last = torch.tensor(counts).cumsum(0) - 1
    logits = lead.model.lm_head(hidden[last.to(hidden.device)]).float()
    return _record(sessions, ids, positions, times, kinds, logits)


def _record(sessions, ids, positions, times, kinds, logits: torch.Tensor) -> list[torch.Tensor]:
    """Commit the tokens just written to each session's cache (and its trace); return its logits."""
    for s, t, pos, when, kind, row in zip(sessions, ids, positions, times, kinds, logits):
        s.cache.commit(t.numel(), kind, when)
        if s.trace is not None:
            s.trace.ids.append(t.cpu())
            s.trace.positions.append(pos.cpu())
            s.trace.logits.append((s.cache.fed - 1, row.cpu()))
    return list(logits)


def _encode(sessions: list[StreamingSession], frames: list[torch.Tensor]):
    """One ViT call over every stream's window -> per stream (visual embeds, pixel rows, grid)."""
    lead = sessions[0]
    patches = [s._patches(f) for s, f in zip(sessions, frames)]
    pixel_values, grids = torch.cat([p for p, _ in patches]), torch.cat([g for _, g in patches])
    out = lead.model.model.visual(pixel_values, grid_thw=grids.to(lead.device))
    embeds = getattr(out, "pooler_output", out)
    sizes = [int(g.prod()) // lead.spec.merge_size**2 for g in grids]
    return [(e, p, g[None]) for e, (p, _), g in zip(embeds.split(sizes), patches, grids)]


def _decode(sessions: list[StreamingSession], logits: list[torch.Tensor], times: list[float],
            forced: list[list[int] | None]) -> list[list[int]]:
    """Decode every stream until its stop token or limit; the streams still talking share each step."""
    generated: list[list[int]] = [[] for _ in sessions]
    talking = list(range(len(sessions)))
    while True:
        still = []
        for i in talking:
            s, f, out = sessions[i], forced[i], generated[i]
            if f is None:
                out.append(s._choose(logits[i]))
            else:
                out.append(f[len(out)] if len(out) < len(f) else s.stream_eos)
            limit = s.max_new_tokens if f is None else len(f) + 1
            if out[-1] not in s.stops and len(out) < limit:
                still.append(i)
        if not still:
            return generated
        group = [sessions[i] for i in still]
        tokens, starts = [generated[i][-1] for i in still], [s.next_pos for s in group]
        for s in group:
            s.next_pos += 1
        ids = [torch.tensor([t]) for t in tokens]
        positions = [torch.full((3, 1), p, dtype=torch.long) for p in starts]
        when, kinds = [times[i] for i in still], [TEXT] * len(still)
        if group[0].decode_graphs is not None:
            logits_now = group[0].decode_graphs.step([s.cache for s in group], tokens, starts)
            rows = _record(group, ids, positions, when, kinds, logits_now)
        else:
            embeds = group[0].model.get_input_embeddings()(torch.tensor(tokens, device=group[0].device))
            rows = _feed(group, ids, positions, embeds, when, kinds)
        for i, token, row in zip(still, tokens, rows):
            logits[i] = row
            sessions[i].seen.add(token)
        talking = still


@torch.no_grad()
def step_streams(sessions: list[StreamingSession], frames: list[torch.Tensor],
                 force_texts: list[str | None] | None = None) -> list[WindowResult]:
    """One window for each stream (``frames[i]`` for ``sessions[i]``), stepped together.

    The timings of each result are those of the shared steps."""
    force_texts = force_texts or [None] * len(sessions)
    if not (len(sessions) == len(frames) == len(force_texts)) or not sessions:
        raise ValueError("step_streams needs one window of frames (and force text) per session")
    if len({id(s) for s in sessions}) < len(sessions) or any(s.model is not sessions[0].model for s in sessions):
        raise ValueError("each session is stepped once per call, and all share one model")
    t0 = time.perf_counter()
    windows = [Window(slice(0, len(f)), s.clock, s.clock + len(f) / s.fps) for s, f in zip(sessions, frames)]
    visual = _encode(sessions, frames)
    t_vision = time.perf_counter()

    ids, positions, embeds, kinds = [], [], [], []
    for s, window, (embeds_v, pixel_values, grid) in zip(sessions, windows, visual):
        turn, pos = s._prompt(window, grid)
        turn_dev = turn.to(s.device)
        e = s.model.get_input_embeddings()(turn_dev)
        e[turn_dev == s.ids.video_pad] = embeds_v.to(e.dtype)
        ids.append(turn), positions.append(pos), embeds.append(e)
        kinds.append((turn == s.ids.video_pad).to(torch.int8))
        if s.trace is not None:
            s.trace.pixel_values.append(pixel_values.cpu())
            s.trace.grids.append(grid)
    logits = _feed(sessions, ids, positions, torch.cat(embeds), [w.end for w in windows], kinds)
    for s, turn in zip(sessions, ids):
        s.seen.update(turn.tolist())
    t_prefill = time.perf_counter()

    forced = [None if t is None else s.tokenizer(t, add_special_tokens=False).input_ids
              for s, t in zip(sessions, force_texts)]
    generated = _decode(sessions, logits, [w.end for w in windows], forced)
    t_decode = time.perf_counter()
    evicted = [s._evict(w.end) for s, w in zip(sessions, windows)]
    t_evict = time.perf_counter()

    ms = lambda a, b: (b - a) * 1e3
    timings = {"vision": ms(t0, t_vision), "prefill": ms(t_vision, t_prefill), "decode": ms(t_prefill, t_decode),
               "evict": ms(t_decode, t_evict), "total": ms(t0, t_evict)}
    return [s._finish(w, g, dict(timings), int(t.numel()), e)
            for s, w, g, t, e in zip(sessions, windows, generated, ids, evicted)]
