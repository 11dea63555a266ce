"""A streaming commentary session: one stream on a :class:`~livecc.infer.engine.StreamEngine`.

The one-stream convenience over the engine: ``session.step(frames)`` comments on one window,
``session.ask(text)`` puts a question into the next window, ``session.close()`` gives the stream's
pages back. :func:`step_streams` steps several sessions (on one model and pool) together.
"""

from __future__ import annotations

from dataclasses import replace

import torch

from ..data.windows import FrameWindow, WindowPlan
from .cache import PAGE_SIZE, KVPool
from .config import SessionConfig
from .engine import StreamEngine, WindowResult

__all__ = ["StreamingSession", "step_streams"]


class StreamingSession:
    """``StreamingSession(model, processor, config, pool=..., trace=...)``; any
    :class:`SessionConfig` field may also be given as a keyword (``query=...``, ``horizon=...``).
    Without a config the session streams as the model was trained to (its recorded window plan
    and pixel bounds, :meth:`SessionConfig.for_model`)."""

    def __init__(self, model, processor, config: SessionConfig | None = None, *, pool: KVPool | None = None,
                 trace: bool = False, page_size: int = PAGE_SIZE, cuda_graphs: bool = True, **options):
        unknown = set(options) - SessionConfig.names()
        if unknown:
            raise TypeError(f"unknown session options {sorted(unknown)}")
        self.engine = StreamEngine.of(model, processor, pool, page_size=page_size, cuda_graphs=cuda_graphs)
        base = config if config is not None else SessionConfig.for_model(model)
        self.state = self.engine.open(replace(base, **options), trace)

    @property
    def config(self) -> SessionConfig:
        return self.state.config

    @property
    def cache(self):
        return self.state.cache

    @property
    def trace(self):
        return self.state.trace

    @property
    def clock(self) -> float:
        return self.state.clock

    @property
    def window_index(self) -> int:
        return self.state.window_index

    @property
    def frames_needed(self) -> int:
        return self.state.frames_needed

    @property
    def plan(self) -> WindowPlan:
        return self.state.config.plan

    def step(self, window: FrameWindow | torch.Tensor, force_text: str | None = None) -> WindowResult:
        """Comment on one window: a :class:`FrameWindow` (its own times), or uint8 frames
        ``[T, H, W, 3]`` following the last window; ``force_text`` feeds a given answer instead of
        decoding one (teacher forcing)."""
        return self.engine.step([self.state], [window], [force_text])[0]

    def ask(self, question: str) -> None:
        """Ask a question mid-stream: it goes into the next window's user turn."""
        self.engine.ask(self.state, question)

    def close(self) -> None:
        """End the stream: its pages go back to the pool."""
        self.engine.close(self.state)


def step_streams(sessions: list[StreamingSession], frames: list[FrameWindow | torch.Tensor],
                 force_texts: list[str | None] | None = None) -> list[WindowResult]:
    """One window for each session (``frames[i]`` for ``sessions[i]``), stepped together on their
    shared engine: one ViT call, one packed prefill, decode steps batched over the streams talking."""
    if not sessions:
        raise ValueError("step_streams needs one window of frames (and force text) per session")
    engine = sessions[0].engine
    if any(s.engine is not engine for s in sessions):
        raise ValueError("sessions stepped together must share one model and KVPool")
    return engine.step([s.state for s in sessions], frames, force_texts)
