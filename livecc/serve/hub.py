"""Many viewers on one streaming engine: sources feed windows, one loop steps every stream together.

Each served stream has a source (an uploaded file or a URL read by a thread at real-time pace, or
frames arriving over a WebSocket), a bounded queue of windows and any number of subscribers. One
engine thread takes a window from every stream that has one and steps them together, so N viewers
cost one batched step, not N. Policies, all counted: a window arriving while its stream's queue is
full is dropped (the stream's clock follows the source, so ``Time=`` stays true); a subscriber too
slow to take its events loses the oldest; closing a stream gives its pages back at once.
"""

from __future__ import annotations

import collections
import contextlib
import queue
import statistics
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..data.video import VideoError
from ..infer import SessionConfig, StreamEngine, StreamState, iter_windows
from ..infer.stream import percentile

__all__ = ["Hub", "HubFull", "ServedStream"]


class HubFull(RuntimeError):
    """More streams than the server was started for."""


@dataclass
class ServedStream:
    id: str
    source: str  # "upload", "url" or "frames"
    state: StreamState
    windows: queue.Queue = field(default_factory=lambda: queue.Queue(maxsize=2))
    subscribers: list[queue.Queue] = field(default_factory=list)
    windows_said: list[dict] = field(default_factory=list)  # every window event, for late viewers and WebVTT
    frames: list[torch.Tensor] = field(default_factory=list)  # frames sent over a WebSocket, not yet a window
    sent_frames: int = 0
    dropped_windows: int = 0
    dropped_events: int = 0
    error: str | None = None
    finished: bool = False  # the source ended
    closed: bool = False


class Hub:
    def __init__(self, model, processor, *, max_streams: int = 8, config: SessionConfig = SessionConfig(),
                 upload_dir: str | Path, events_per_viewer: int = 256):
        self.engine = StreamEngine.of(model, processor)
        self.engine.warm_up(max_streams, max_tokens=4096)
        self.config, self.max_streams = config, max_streams
        self.upload_dir = Path(upload_dir)
        self.upload_dir.mkdir(parents=True, exist_ok=True)
        self.events_per_viewer = events_per_viewer
        self.streams: dict[str, ServedStream] = {}
        self.lock = threading.Lock()  # guards the streams and the engine
        self.wake = threading.Event()
        self.latencies: collections.deque[float] = collections.deque(maxlen=1000)
        self.windows_done = self.stream_seconds = self.busy_seconds = 0.0
        self.running = True
        self.loop = threading.Thread(target=self._run, name="livecc-engine", daemon=True)
        self.loop.start()

    # ------------------------------------------------------------------ streams

    def open(self, source: str, query: str = "") -> ServedStream:
        with self.lock:
            if sum(not s.closed for s in self.streams.values()) >= self.max_streams:
                raise HubFull(f"the server serves at most {self.max_streams} streams at once")
            config = SessionConfig(**{**self.config.__dict__, "query": query or self.config.query})
            stream = ServedStream(uuid.uuid4().hex[:12], source, self.engine.open(config))
            self.streams[stream.id] = stream
        return stream

    def read(self, stream: ServedStream, location: str, *, realtime: bool = True, timeout: float = 10.0) -> None:
        """Feed ``stream`` from a file or URL in a thread, window by window, at real-time pace."""

        def reader():
            started = time.monotonic()
            try:
                for frames, t_end in iter_windows(location, timeout=timeout):
                    if stream.closed:
                        return
                    if realtime and (wait := started + t_end - time.monotonic()) > 0:
                        time.sleep(wait)
                    self._enqueue(stream, frames, t_end, wait=not realtime)
            except (VideoError, OSError, ValueError) as e:
                self._fail(stream, str(e))
            finally:
                stream.finished = True
                self.wake.set()

        threading.Thread(target=reader, name=f"livecc-read-{stream.id}", daemon=True).start()

    def add_frame(self, stream: ServedStream, frame: torch.Tensor) -> None:
        """One frame sampled by the viewer at 2 FPS (uint8 ``[H, W, 3]``); whole windows go to the engine."""
        stream.frames.append(frame)
        need = stream.state.config.initial_frames if stream.sent_frames == 0 else stream.state.config.streaming_frames
        if len(stream.frames) >= need:
            window, stream.frames = torch.stack(stream.frames[:need]), stream.frames[need:]
            stream.sent_frames += need
            self._enqueue(stream, window, stream.sent_frames / stream.state.config.fps)

    def ask(self, stream: ServedStream, text: str) -> None:
        with self.lock:
            self.engine.ask(stream.state, text)

    def subscribe(self, stream: ServedStream) -> tuple[queue.Queue, list[dict]]:
        """A viewer's queue of the stream's events from now on, and the windows it missed so far."""
        events: queue.Queue = queue.Queue(maxsize=self.events_per_viewer)
        with self.lock:  # windows are recorded and published under the lock: none missed, none twice
            stream.subscribers.append(events)
            if stream.closed:  # it ended before this viewer came: it still hears the end
                events.put_nowait(self._end_event(stream))
            return events, list(stream.windows_said)

    def close(self, stream: ServedStream) -> None:
        """End a stream now: its pages go back to the pool and its viewers get an end event."""
        with self.lock:
            if stream.closed:
                return
            stream.closed = True
            self.engine.close(stream.state)
        self._publish(stream, self._end_event(stream))

    @staticmethod
    def _end_event(stream: ServedStream) -> dict:
        return {"type": "end", "windows": len(stream.windows_said), "dropped_windows": stream.dropped_windows}

    def shutdown(self) -> None:
        for stream in list(self.streams.values()):
            self.close(stream)
        self.running = False
        self.wake.set()
        self.loop.join(timeout=10)

    def metrics(self) -> dict:
        lat = list(self.latencies)
        active = [s for s in self.streams.values() if not s.closed]
        memory = torch.cuda.memory_allocated() / 2**30 if torch.cuda.is_available() else None
        return {"active_streams": len(active), "max_streams": self.max_streams, "windows": int(self.windows_done),
                "window_p50_ms": percentile(lat, 0.5) if lat else None,
                "window_p99_ms": percentile(lat, 0.99) if lat else None,
                "window_mean_ms": statistics.fmean(lat) if lat else None,
                "real_time_factor": self.busy_seconds / self.stream_seconds if self.stream_seconds else None,
                "dropped_windows": sum(s.dropped_windows for s in self.streams.values()),
                "dropped_events": sum(s.dropped_events for s in self.streams.values()),
                "kv_pages_in_use": self.engine.pool.pages_in_use, "kv_pages": self.engine.pool.pages,
                "gpu_memory_gb": memory}

    # ------------------------------------------------------------------ the engine loop

    def _enqueue(self, stream: ServedStream, frames: torch.Tensor, t_end: float, wait: bool = False) -> None:
        """Queue a window; a live source's window is dropped when the queue is full (the engine is
        behind), a file read as fast as possible waits for room instead."""
        self.wake.set()
        try:
            if wait:
                while not stream.closed:
                    with contextlib.suppress(queue.Full):
                        stream.windows.put((frames, t_end), timeout=0.5)
                        break
            else:
                stream.windows.put_nowait((frames, t_end))
        except queue.Full:  # the engine is behind: this window is dropped, and said to be
            stream.dropped_windows += 1
            self._publish(stream, {"type": "dropped", "end": t_end})
        self.wake.set()

    def _fail(self, stream: ServedStream, message: str) -> None:
        stream.error = message
        self._publish(stream, {"type": "error", "message": message})
        self.close(stream)

    def _publish(self, stream: ServedStream, event: dict) -> None:
        for events in list(stream.subscribers):
            while True:
                try:
                    events.put_nowait(event)
                    break
                except queue.Full:  # a slow viewer loses its oldest event, not the others' pace
                    stream.dropped_events += 1
                    with contextlib.suppress(queue.Empty):
                        events.get_nowait()

    def _run(self) -> None:
        while self.running:
            self.wake.wait(timeout=0.1)
            self.wake.clear()
            while self._step_ready():
                pass

    def _step_ready(self) -> bool:
        """Step every stream that has a window, together; False when none had one (then the
        streams whose source ended and whose windows are all done are closed)."""
        results, done = None, []
        with self.lock:
            ready = []
            for stream in self.streams.values():
                if not stream.closed and not stream.windows.empty():
                    frames, t_end = stream.windows.get_nowait()
                    ready.append((stream, frames, t_end))
            if ready:
                results = self._step(ready)
            else:
                done = [s for s in self.streams.values() if s.finished and not s.closed and s.windows.empty()]
        for stream in done:
            self.close(stream)  # takes the lock itself
        if ready and results is None:
            for stream, _, _ in ready:
                self._fail(stream, stream.error)
        return bool(ready)

    def _step(self, ready: list[tuple[ServedStream, torch.Tensor, float]]):
        """One engine step over the ready streams (the lock held); publishes each window."""
        for stream, frames, t_end in ready:  # the clock follows the source over dropped windows
            stream.state.clock = t_end - len(frames) / stream.state.config.fps
        started = time.perf_counter()
        try:
            results = self.engine.step([s.state for s, _, _ in ready], [f for _, f, _ in ready])
        except Exception as e:  # a bad window (odd frames) ends its streams, never the server
            for stream, _, _ in ready:
                stream.error = f"{type(e).__name__}: {e}"
            return None
        finally:
            self.busy_seconds += time.perf_counter() - started
        for (stream, frames, _), result in zip(ready, results):
            self.latencies.append(result.timings["total"])
            self.windows_done += 1
            self.stream_seconds += len(frames) / stream.state.config.fps
            event = {"type": "window", "index": result.index, "start": result.start, "end": result.end,
                     "text": result.text, "latency_ms": round(result.timings["total"], 1)}
            stream.windows_said.append(event)
            self._publish(stream, event)
        return results

    @staticmethod
    def new_upload_name(suffix: str) -> str:
        """A server-chosen name: nothing in a request decides where an upload is written."""
        safe = "".join(c for c in suffix.lower() if c.isalnum())[:8]
        return f"{uuid.uuid4().hex}.{safe or 'bin'}"

