"""What the engine keeps per stream and what a window returns."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..qwen_vl import VideoFormat
from .cache import StreamKVCache
from .config import SessionConfig

__all__ = ["StreamState", "Trace", "WindowResult"]


@dataclass
class WindowResult:
    index: int
    start: float  # stream seconds
    end: float
    text: str  # the commentary of this window, without the streaming EOS
    token_ids: list[int]
    # milliseconds: preprocess (frames to patch rows), vision (the ViT), prefill, decode, evict, total
    timings: dict[str, float]
    prefill_tokens: int
    cache_tokens: int
    evicted_tokens: int = 0
    next_position: int = 0  # where the stream's next token goes (its largest position + 1)
    asked: list[str] = field(default_factory=list)  # the questions this window answered

    @property
    def tokens_per_s(self) -> float:
        """Tokens generated per second of decoding (the first comes from the prefill's logits)."""
        ms = self.timings["decode"]
        return len(self.token_ids) * 1e3 / ms if ms > 0 else float("nan")


@dataclass
class Trace:
    """What a stream fed and predicted, for checking it against one full forward pass: positions
    as fed (a survivor's current position is that less ``cache.moved``)."""

    ids: list[torch.Tensor] = field(default_factory=list)
    positions: list[torch.Tensor] = field(default_factory=list)
    pixel_values: list[torch.Tensor] = field(default_factory=list)
    grids: list[torch.Tensor] = field(default_factory=list)
    logits: list[tuple[int, torch.Tensor]] = field(default_factory=list)  # (fed index, logits)
    evictions: list[tuple[int, torch.Tensor]] = field(default_factory=list)  # (tokens fed by then, origins)
    moves: list[tuple[int, torch.Tensor, torch.Tensor]] = field(default_factory=list)  # (fed by then, origins, by)


@dataclass
class StreamState:
    """One stream: its settings, cache and where it stands."""

    config: SessionConfig
    cache: StreamKVCache
    seen: torch.Tensor  # bool [V] on the device: token ids fed so far, for the repetition penalty
    penalty: torch.Tensor  # the repetition penalty, a scalar on the device (no copy per decode step)
    generator: torch.Generator
    video: VideoFormat  # how the model's family writes frames (Qwen2.5-VL's spacing, Qwen3-VL's timestamps)
    next_pos: int = 0
    clock: float = 0.0  # the end of the last window, in stream seconds
    window_index: int = 0
    pending: list[int] = field(default_factory=list)  # closes the previous answer; fed with the next window
    questions: list[str] = field(default_factory=list)  # asked since the last window; fed with the next
    trace: Trace | None = None

    @property
    def frames_needed(self) -> int:
        return self.config.plan.frames_needed(self.window_index)
