"""A streaming commentary session: one KV cache, one window at a time, no re-tokenization.

Each window (3 s first, then 1 s at 2 FPS) is one user turn (``Time=a-b s`` + its frames + the
query on the first turn) prefilled on top of the cache with M-RoPE positions continuing from it,
then decoded until the streaming EOS ``' ...'``, ``<|im_end|>`` or ``max_new_tokens``. The answer
stays in the cache and is closed (``' ...<|im_end|>\\n'``) at the start of the next window, so
the cache always holds exactly the training format. Visual tokens older than ``horizon`` seconds
are evicted; text stays (optionally capped to a sink plus the most recent tokens).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from ..data.processor import TokenIds, VisionSpec
from ..data.rope import mrope_position_ids, rope_time_interval
from ..data.sequence import SYSTEM_TURN, Window, expand_video_pads, patch_rows, user_turn
from ..data.video import FPS, smart_resize
from .cache import TEXT, VISION, StreamKVCache
from .decoder import forward_tokens

__all__ = ["StreamingSession", "WindowResult"]


@dataclass
class WindowResult:
    index: int
    start: float  # stream seconds
    end: float
    text: str  # the commentary of this window, without the streaming EOS
    token_ids: list[int]
    timings: dict[str, float]  # milliseconds: vision, prefill, decode, total
    prefill_tokens: int
    cache_tokens: int
    evicted_tokens: int = 0


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
        cfg = model.config.text_config
        head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        self.cache = StreamKVCache(cfg.num_hidden_layers, cfg.num_key_value_heads, head_dim, self.dtype, self.device)
        self.seen = torch.zeros(model.lm_head.out_features, dtype=torch.bool, device=self.device)
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

    @torch.no_grad()
    def step(self, frames: torch.Tensor, force_text: str | None = None) -> WindowResult:
        """Comment on one window of uint8 frames ``[T, H, W, 3]``; ``force_text`` feeds a given
        answer instead of decoding one (teacher forcing)."""
        if frames.ndim != 4 or frames.shape[0] == 0:
            raise ValueError(f"expected uint8 frames [T, H, W, 3], got {tuple(frames.shape)}")
        t0 = time.perf_counter()
        window = Window(slice(0, len(frames)), self.clock, self.clock + len(frames) / self.fps)
        embeds_v, pixel_values, grid = self._encode(frames)
        t_vision = time.perf_counter()

        head = SYSTEM_TURN if self.window_index == 0 else ""
        query = self.query if self.window_index == 0 else ""
        text = head + user_turn(window, query) + "<|im_start|>assistant\n"
        ids = torch.tensor(self.pending + self.tokenizer(text, add_special_tokens=False).input_ids)
        ids = expand_video_pads(ids, self.ids.video_pad, [int(grid.prod()) // self.spec.merge_size**2])
        positions, self.next_pos = mrope_position_ids(ids, grid, (self.ids.video_pad,), self.spec.merge_size,
                                                      start=self.next_pos, time_interval=self.time_interval)
        ids_dev = ids.to(self.device)
        embeds = self.model.get_input_embeddings()(ids_dev)
        embeds[ids_dev == self.ids.video_pad] = embeds_v.to(embeds.dtype)
        logits = self._feed(ids, positions, embeds, window.end, kind=(ids == self.ids.video_pad).to(torch.int8))
        if self.trace is not None:
            self.trace.pixel_values.append(pixel_values.cpu())
            self.trace.grids.append(grid)
        self.seen[ids_dev] = True
        t_prefill = time.perf_counter()

        forced = None if force_text is None else self.tokenizer(force_text, add_special_tokens=False).input_ids
        generated = self._decode(logits, window.end, forced)
        t_decode = time.perf_counter()

        evicted = self._evict(window.end)
        self.pending = self._closing(generated)
        self.clock = window.end
        self.window_index += 1
        answer = [t for t in generated if t not in (self.stream_eos, self.ids.im_end)]
        ms = lambda a, b: (b - a) * 1e3
        return WindowResult(
            index=self.window_index - 1, start=window.start, end=window.end,
            text=self.tokenizer.decode(answer).strip(), token_ids=generated,
            timings={"vision": ms(t0, t_vision), "prefill": ms(t_vision, t_prefill),
                     "decode": ms(t_prefill, t_decode), "total": ms(t0, time.perf_counter())},
            prefill_tokens=int(ids.numel()), cache_tokens=self.cache.length, evicted_tokens=evicted,
        )

    def _encode(self, frames: torch.Tensor):
        h, w = frames.shape[1:3]
        size = smart_resize(h, w, self.spec.factor, self.min_pixels, self.max_pixels)
        pixel_values, grid = patch_rows(frames.to(self.device), size, self.spec, self.dtype)
        out = self.model.model.visual(pixel_values, grid_thw=grid.to(self.device))
        return getattr(out, "pooler_output", out), pixel_values, grid

    def _feed(self, ids, positions, embeds, t: float, kind) -> torch.Tensor:
        """Run ``ids`` through the LLM on top of the cache; return the logits after the last one."""
        hidden = forward_tokens(self.model, embeds, positions, self.cache)
        self.cache.commit(ids.numel(), kind, t)
        logits = self.model.lm_head(hidden[-1]).float()
        if self.trace is not None:
            self.trace.ids.append(ids.cpu())
            self.trace.positions.append(positions.cpu())
            self.trace.logits.append((self.cache.fed - 1, logits.cpu()))
        return logits

    def _choose(self, logits: torch.Tensor) -> int:
        if self.repetition_penalty != 1.0:
            seen = logits[self.seen]
            logits = logits.clone()
            logits[self.seen] = torch.where(seen > 0, seen / self.repetition_penalty, seen * self.repetition_penalty)
        if self.temperature <= 0:
            return int(logits.argmax())
        probs = torch.softmax(logits / self.temperature, dim=-1)
        return int(torch.multinomial(probs, 1, generator=self.generator))

    def _decode(self, logits: torch.Tensor, t: float, forced: list[int] | None) -> list[int]:
        generated: list[int] = []
        stops = (self.stream_eos, self.ids.im_end)
        limit = self.max_new_tokens if forced is None else len(forced) + 1
        while True:
            if forced is None:
                token = self._choose(logits)
            else:
                token = forced[len(generated)] if len(generated) < len(forced) else self.stream_eos
            generated.append(token)
            if token in stops or len(generated) >= limit:
                return generated
            ids = torch.tensor([token])
            positions = torch.full((3, 1), self.next_pos, dtype=torch.long)
            self.next_pos += 1
            embeds = self.model.get_input_embeddings()(ids.to(self.device))
            logits = self._feed(ids, positions, embeds, t, kind=TEXT)
            self.seen[token] = True

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
            old = text_slots[self.text_sink : max(self.text_sink, text_slots.numel() - self.max_text_tokens)]
            drop[old] = True
        if self.trace is not None and drop.any():
            self.trace.evictions.append((self.cache.fed, self.cache.origin[:n][drop].clone()))
        return self.cache.evict(drop)
