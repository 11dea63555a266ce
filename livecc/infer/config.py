"""A stream's settings in one dataclass: what the CLI, evaluation, the demo and the benchmarks pass around."""

from __future__ import annotations

from dataclasses import dataclass, fields

from ..data.video import FPS

__all__ = ["SessionConfig"]


@dataclass(frozen=True)
class SessionConfig:
    query: str = ""  # the first window's user text (a prompt, a title, previous commentary)
    max_new_tokens: int = 16  # per window
    repetition_penalty: float = 1.05
    temperature: float = 0.0  # 0: greedy
    horizon: float = 240.0  # seconds of video kept in the KV cache; older visual tokens are evicted
    text_sink: int = 0  # with max_text_tokens: the first text tokens, always kept
    max_text_tokens: int | None = None  # cap on old text kept (None: all of it)
    min_pixels: int = 100 * 28 * 28  # per frame
    max_pixels: int = 384 * 28 * 28
    initial_frames: int = 6  # the first window: 3 s at 2 FPS
    streaming_frames: int = 2  # every later window: 1 s
    fps: float = FPS
    seed: int = 0  # for sampling

    def __post_init__(self):
        for name in ("max_new_tokens", "initial_frames", "streaming_frames", "min_pixels", "max_pixels"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if not (self.repetition_penalty > 0 and self.temperature >= 0 and self.horizon > 0 and self.fps > 0):
            raise ValueError("repetition_penalty, horizon and fps must be positive and temperature >= 0")
        if self.max_text_tokens is not None and self.max_text_tokens < 0 or self.text_sink < 0:
            raise ValueError("max_text_tokens and text_sink must be >= 0")

    @classmethod
    def names(cls) -> set[str]:
        return {f.name for f in fields(cls)}
