"""A stream's timeline, in one place: how frames sampled at ``fps`` become windows, and when a
window is due in real time.

The plan (6 frames = 3 s first, then 2 frames = 1 s, at 2 FPS: the reference's) is read by the
training sample builder and by every streaming source, the engine, the server and the demo, so a
change to it changes them together. A window carries its own times (stream seconds, from its
first frame to the end of its last), so a window dropped by a source is a gap in the timeline,
not a clock to patch.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import torch

from .video import FPS

__all__ = ["FrameWindow", "StreamFormat", "WindowPlan", "Windower", "pace"]


@dataclass(frozen=True)
class WindowPlan:
    initial_frames: int = 6  # the first window: 3 s at 2 FPS
    frames_per_window: int = 2  # every later window: 1 s
    fps: float = FPS

    def __post_init__(self):
        if self.initial_frames < 1 or self.frames_per_window < 1 or not self.fps > 0:
            raise ValueError(f"a window plan needs positive frame counts and fps, got {self}")

    def frames_needed(self, index: int) -> int:
        """Frames of window ``index``."""
        return self.initial_frames if index == 0 else self.frames_per_window

    def bounds(self, n_frames: int) -> list[tuple[int, int]]:
        """Frame ranges of a clip of ``n_frames``: the last window (or a short clip's only one) may be short."""
        bounds = [0, min(self.initial_frames, n_frames)]
        while bounds[-1] < n_frames:
            bounds.append(min(bounds[-1] + self.frames_per_window, n_frames))
        return list(zip(bounds, bounds[1:]))

    def windows(self, frames: torch.Tensor) -> Iterator[FrameWindow]:
        """The windows of a decoded clip ``[T, H, W, 3]`` whose frame 0 is at stream second 0."""
        for index, (a, b) in enumerate(self.bounds(len(frames))):
            yield FrameWindow(frames[a:b], index, a / self.fps, b / self.fps)

    def to_dict(self) -> dict:
        return {"initial_frames": self.initial_frames, "frames_per_window": self.frames_per_window, "fps": self.fps}


@dataclass
class FrameWindow:
    """One window of a stream: uint8 frames ``[T, H, W, 3]`` and its span in stream seconds."""

    frames: torch.Tensor
    index: int
    start: float
    end: float


class Windower:
    """Frames in as a live source samples them (frame ``n`` at ``n / fps`` stream seconds, counting
    repeats), whole windows out by ``plan``."""

    def __init__(self, plan: WindowPlan):
        self.plan = plan
        self.buffer: list[torch.Tensor] = []
        self.first = 0  # stream frame index of buffer[0]
        self.index = 0

    def push(self, frame: torch.Tensor, count: int = 1) -> list[FrameWindow]:
        """Add ``frame`` ``count`` times (a sampler may take one decoded frame for several targets)."""
        self.buffer += [frame] * count
        out = []
        while len(self.buffer) >= (need := self.plan.frames_needed(self.index)):
            frames, self.buffer = torch.stack(self.buffer[:need]), self.buffer[need:]
            out.append(FrameWindow(frames, self.index, self.first / self.plan.fps,
                                   (self.first + need) / self.plan.fps))
            self.first += need
            self.index += 1
        return out


def pace(windows: Iterable[FrameWindow], *, realtime: bool = True,
         stop: threading.Event | None = None) -> Iterator[tuple[FrameWindow, float]]:
    """``(window, lateness in seconds)`` once each window's last frame is due. Stream second 0 is
    when iteration began, or later by as much as the first window arrives after its own end (a
    live source delivers windows as they happen, a file at once). Without ``realtime`` every
    window is due at once. Setting ``stop`` ends a wait for the next window at once, and the
    iteration with it."""
    began, wall0 = time.monotonic(), None
    for window in windows:
        if not realtime:
            yield window, 0.0
            continue
        if wall0 is None:
            wall0 = max(began, time.monotonic() - window.end)
        due = wall0 + window.end
        if (wait := due - time.monotonic()) > 0:
            if stop is None:
                time.sleep(wait)
            elif stop.wait(wait):
                return
        yield window, max(0.0, time.monotonic() - due)


@dataclass(frozen=True)
class StreamFormat:
    """What a model was trained to stream with: the window plan and the per-frame pixel bounds.
    Training writes it into the model's config (``livecc_stream``, saved with the checkpoint);
    streaming sessions, ``livecc stream``, ``serve`` and ``eval`` start from it."""

    plan: WindowPlan = WindowPlan()
    min_pixels: int = 100 * 28 * 28
    max_pixels: int = 768 * 28 * 28

    KEY = "livecc_stream"

    def to_dict(self) -> dict:
        return {"plan": self.plan.to_dict(), "min_pixels": self.min_pixels, "max_pixels": self.max_pixels}

    @classmethod
    def of_model(cls, model) -> StreamFormat | None:
        """The format recorded in ``model.config``, or None for a model trained elsewhere."""
        saved = getattr(model.config, cls.KEY, None)
        if saved is None:
            return None
        try:
            return cls(WindowPlan(**saved["plan"]), int(saved["min_pixels"]), int(saved["max_pixels"]))
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"the model's config has a malformed {cls.KEY!r}: {saved!r} ({e})") from e

    def record_in(self, model) -> None:
        setattr(model.config, self.KEY, self.to_dict())
