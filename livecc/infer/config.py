"""A stream's settings in one dataclass: what the CLI, evaluation, the demo and the benchmarks pass around.

Bounded by default, so a stream can run forever: the KV cache keeps the last ``horizon`` seconds
of frames, the first ``text_sink`` text tokens (the system turn, the query) and the most recent
``max_text_tokens`` of the rest; the sizes are StreamingVLM's (a 16 s vision window, a 512-token
text sink and a 512-token recent-text window, trained on LiveCC's own data). Evicted tokens free
their positions; once ``compact_after`` are free the survivors move down to close the gaps
(their keys re-rotated), so the largest position stays within the cache's size and the range the
model was trained on.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

from ..data.windows import StreamFormat, WindowPlan

__all__ = ["SessionConfig"]


@dataclass(frozen=True)
class SessionConfig:
    query: str = ""  # the first window's user text (a prompt, a title, previous commentary)
    max_new_tokens: int = 16  # per window
    repetition_penalty: float = 1.05
    temperature: float = 0.0  # 0: greedy
    horizon: float = 16.0  # seconds of video kept in the KV cache; older visual tokens are evicted
    text_sink: int = 512  # the first text tokens, always kept
    max_text_tokens: int | None = 512  # the most recent text kept after the sink (None: all of it, unbounded)
    compact_after: int | None = 1024  # free positions before the survivors close the gaps (0: at every
    #                                   eviction; None: never, positions grow with the stream)
    min_pixels: int = 100 * 28 * 28  # per frame
    max_pixels: int = 384 * 28 * 28
    plan: WindowPlan = WindowPlan()  # frames per window and fps
    seed: int = 0  # for sampling

    def __post_init__(self):
        for name in ("max_new_tokens", "min_pixels", "max_pixels"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if not (self.repetition_penalty > 0 and self.temperature >= 0 and self.horizon > 0):
            raise ValueError("repetition_penalty and horizon must be positive and temperature >= 0")
        if self.text_sink < 0 or any(v is not None and v < 0 for v in (self.max_text_tokens, self.compact_after)):
            raise ValueError("text_sink, max_text_tokens and compact_after must be >= 0")
        if self.max_pixels < self.min_pixels:
            raise ValueError(f"max_pixels ({self.max_pixels}) is below min_pixels ({self.min_pixels})")
        if not isinstance(self.query, str):
            raise ValueError(f"query must be text, got {type(self.query).__name__}")

    @classmethod
    def names(cls) -> set[str]:
        return {f.name for f in fields(cls)}

    @classmethod
    def for_model(cls, model, **overrides) -> SessionConfig:
        """The settings ``model`` was trained to stream with (its recorded window plan and pixel
        bounds, where training recorded them), then ``overrides``."""
        trained = StreamFormat.of_model(model)
        base = cls() if trained is None else cls(plan=trained.plan, min_pixels=trained.min_pixels,
                                                    max_pixels=trained.max_pixels)
        unknown = set(overrides) - cls.names()
        if unknown:
            raise TypeError(f"unknown session options {sorted(unknown)}")
        return replace(base, **overrides)

    def cache_tokens(self, spec) -> int:
        """The most tokens a stream's cache holds under these bounds (4096 when text is unbounded),
        with frames of vision ``spec``: what a pool is sized for before the first window."""
        if self.max_text_tokens is None:
            return 4096
        per_second = self.max_pixels // spec.factor**2 * self.plan.fps / spec.temporal_patch_size
        seconds = self.horizon + self.plan.initial_frames / self.plan.fps
        return int(per_second * seconds) + self.text_sink + self.max_text_tokens + 64 + self.max_new_tokens
