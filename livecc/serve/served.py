"""A served stream: what the server holds for one stream between its source, the engine's step
loop and its viewers, and what it counts of itself (its frame allowance, drops and lag)."""

from __future__ import annotations

import collections
import queue
import shutil
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from ..infer import StreamState
from .fanout import Viewers
from .sources import FrameIntake

__all__ = ["FrameRate", "HubFull", "Reservation", "ServedStream", "UploadDir"]

RECENT = 16  # windows the lag and drop figures look back over
TIMER_SLACK_S = 0.005


class HubFull(RuntimeError):
    """More streams than the server was started for."""


class Reservation:
    """A stream slot taken before anything of the stream's is received (a body, a probe): given
    back unless a stream takes it over."""

    def __init__(self, release):
        self._release, self.taken = release, False

    def release(self) -> None:
        if not self.taken:
            self.taken = True
            self._release()


@dataclass
class FrameRate:
    """A viewer's frame allowance: a first window and the next at once, then the plan's frame rate;
    a frame past it is dropped and counted, before it is decoded, and its sender is not read again
    until the allowance has a frame (its socket then holds back a flood, at no cost to the server)."""

    fps: float
    burst: int
    credit: float = 0.0
    at: float = field(default_factory=time.monotonic)
    dropped: int = 0

    @classmethod
    def of(cls, plan) -> FrameRate:
        burst = plan.initial_frames + plan.frames_per_window
        return cls(plan.fps, burst, credit=burst)

    def take(self) -> bool:
        now = time.monotonic()
        self.credit = min(self.burst, self.credit + (now - self.at) * self.fps)
        self.at = now
        if self.credit < 1:
            self.dropped += 1
            return False
        self.credit -= 1
        return True

    def wait_s(self) -> float:
        """Seconds until a frame would be within the rate again (and a little more: an event loop's
        timer may fire up to its clock's resolution early, which would find the frame just short)."""
        return max(0.0, (1 - self.credit) / self.fps - (time.monotonic() - self.at)) + TIMER_SLACK_S


class UploadDir:
    """Where a server writes uploads, under names it chooses: the directory given, or a temporary
    one of its own, removed with it."""

    def __init__(self, path: str | Path | None = None):
        self.own = path is None
        self.path = Path(path) if path else Path(tempfile.mkdtemp(prefix="livecc-uploads-"))
        self.path.mkdir(parents=True, exist_ok=True)

    def new(self, suffix: str) -> Path:
        """A server-chosen path: nothing in a request decides where an upload is written."""
        safe = "".join(c for c in suffix.lower() if c.isalnum())[:8]
        return self.path / f"{uuid.uuid4().hex}.{safe or 'bin'}"

    def remove(self) -> None:
        if self.own:
            shutil.rmtree(self.path, ignore_errors=True)


@dataclass
class ServedStream:
    id: str
    source: str  # "upload", "url" or "frames"
    state: StreamState
    viewers: Viewers
    intake: FrameIntake
    rate: FrameRate  # the frames a viewer may send it
    # (window, when it arrived), at most two waiting: a live stream behind drops its next one
    windows: queue.Queue = field(default_factory=lambda: queue.Queue(maxsize=2))
    questions: collections.deque = field(default_factory=collections.deque)  # checked, for the next window
    upload: Path | None = None  # the file it reads, deleted when it closes
    reader: threading.Thread | None = None  # the thread reading its file or URL, while it lives
    dropped_windows: int = 0
    error: str | None = None
    finished: bool = False  # the source ended
    stop: threading.Event = field(default_factory=threading.Event)  # asked to close; the engine's thread closes it
    closed_at: float | None = None
    last_input: float = field(default_factory=time.monotonic)  # when its source last gave a frame or window
    lags: collections.deque = field(default_factory=lambda: collections.deque(maxlen=RECENT))
    outcomes: collections.deque = field(default_factory=lambda: collections.deque(maxlen=RECENT))  # said?

    @property
    def closing(self) -> bool:
        return self.stop.is_set()

    @property
    def closed(self) -> bool:
        return self.closed_at is not None

    @property
    def holds_slot(self) -> bool:
        """Until it is closed and its reader (FFmpeg's decoders with it) has ended, a stream counts
        against the server's limit: its resources are given back before its slot is."""
        return not self.closed or (self.reader is not None and self.reader.is_alive())

    @property
    def dropped_frames(self) -> int:  # frames sent faster than the stream's frame rate
        return self.rate.dropped

    def take_frame(self) -> bool:
        """Whether a frame arriving now is within the stream's frame rate (:class:`FrameRate`)."""
        if not self.rate.take():
            return False
        self.last_input = time.monotonic()
        return True

    def figures(self, period: float) -> dict:
        """Its recent lag (from a window's arrival to its commentary) and share of windows dropped,
        and whether it holds real time (no recent drop, lag within one window's period)."""
        lag = max(self.lags, default=0.0)
        dropped = sum(not said for said in self.outcomes) / len(self.outcomes) if self.outcomes else 0.0
        return {"id": self.id, "source": self.source, "windows": len(self.viewers.said),
                "dropped_windows": self.dropped_windows, "dropped_frames": self.dropped_frames,
                "lag_s": round(lag, 3), "drop_ratio": round(dropped, 3),
                "real_time": dropped == 0 and lag <= period}
