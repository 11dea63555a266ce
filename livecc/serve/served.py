"""A served stream: what the server holds for one stream between its source, the engine's step
loop and its viewers, and what it counts of itself (its frame allowance, drops and lag)."""

from __future__ import annotations

import collections
import queue
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..infer import StreamState
from .fanout import Viewers
from .sources import FrameIntake

__all__ = ["FrameRate", "HubFull", "Reservation", "ServedStream"]

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
    """A viewer's frame allowance: ``burst`` frames at once, then ``fps``; a frame past it is
    dropped and counted, before it is decoded, and its sender is not read again until the
    allowance has a frame (its socket then holds back a flood, at no cost to the server)."""

    credit: float = 0.0
    at: float = field(default_factory=time.monotonic)
    dropped: int = 0

    def take(self, fps: float, burst: int) -> bool:
        now = time.monotonic()
        self.credit = min(burst, self.credit + (now - self.at) * fps)
        self.at = now
        if self.credit < 1:
            self.dropped += 1
            return False
        self.credit -= 1
        return True

    def wait_s(self, fps: float) -> float:
        """Seconds until a frame would be within the rate again (and a little more: an event loop's
        timer may fire up to its clock's resolution early, which would find the frame just short)."""
        return max(0.0, (1 - self.credit) / fps - (time.monotonic() - self.at)) + TIMER_SLACK_S


@dataclass
class ServedStream:
    id: str
    source: str  # "upload", "url" or "frames"
    state: StreamState
    viewers: Viewers
    intake: FrameIntake
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
    rate: FrameRate = field(default_factory=FrameRate)  # frames it may send at once, refilled at its frame rate
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

    def take_frame(self, fps: float, burst: int) -> bool:
        """Whether a frame arriving now is within the stream's frame rate (:class:`FrameRate`)."""
        if not self.rate.take(fps, burst):
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
