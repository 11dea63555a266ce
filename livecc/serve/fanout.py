"""A stream's events, fanned out to its viewers: each viewer has a bounded asyncio queue on its own
event loop, filled from the engine's thread; a viewer too slow to take its events loses its
oldest, never the others' pace; a viewer that leaves takes its queue with it. Every window said is
kept for late viewers and WebVTT."""

from __future__ import annotations

import asyncio
import threading

__all__ = ["TooManyViewers", "Viewer", "Viewers"]


class TooManyViewers(RuntimeError):
    """A stream watched by as many viewers as it takes."""


class Viewer:
    def __init__(self, loop: asyncio.AbstractEventLoop, size: int):
        self.loop, self.queue = loop, asyncio.Queue(maxsize=size)
        self.dropped = 0

    def _put(self, event: dict) -> None:  # on the viewer's loop
        if self.queue.full():
            self.queue.get_nowait()
            self.dropped += 1
        self.queue.put_nowait(event)


class Viewers:
    def __init__(self, limit: int = 16, queue_size: int = 256):
        self.limit, self.queue_size = limit, queue_size
        self.said: list[dict] = []  # every window event
        self.ended: dict | None = None  # the end event, once the stream ended
        self._viewers: list[Viewer] = []
        self._lock = threading.Lock()
        self.departed_drops = 0

    def subscribe(self, loop: asyncio.AbstractEventLoop) -> tuple[Viewer, list[dict]]:
        """A new viewer on ``loop`` and what it missed (the windows said, and the end if it came)."""
        with self._lock:
            if len(self._viewers) >= self.limit:
                raise TooManyViewers(f"a stream has at most {self.limit} viewers")
            viewer = Viewer(loop, self.queue_size)
            self._viewers.append(viewer)
            return viewer, [*self.said, *([self.ended] if self.ended else [])]

    def unsubscribe(self, viewer: Viewer) -> None:
        with self._lock:
            if viewer in self._viewers:
                self._viewers.remove(viewer)
                self.departed_drops += viewer.dropped

    def publish(self, event: dict) -> None:
        """From any thread: record ``event`` and hand it to every viewer's loop."""
        with self._lock:
            if event["type"] == "window":
                self.said.append(event)
            elif event["type"] == "end":
                self.ended = event
            viewers = list(self._viewers)
        for viewer in viewers:
            try:
                viewer.loop.call_soon_threadsafe(viewer._put, event)
            except RuntimeError:  # its loop has closed: the viewer is gone
                self.unsubscribe(viewer)

    @property
    def count(self) -> int:
        return len(self._viewers)

    @property
    def dropped(self) -> int:
        return self.departed_drops + sum(v.dropped for v in self._viewers)
