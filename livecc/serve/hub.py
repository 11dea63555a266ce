"""Many viewers on one streaming engine: the streams a server holds, their sources, and their lives.

A served stream is fed by a source (:mod:`.sources`: an uploaded file or a URL read by a thread at
real-time pace, or frames over a WebSocket) into a bounded queue of windows; one engine thread
(:mod:`.loop`) steps every stream that has a window together, so N viewers cost one batched step;
its events go out to the stream's viewers (:mod:`.fanout`). Policies, all counted: a live window
arriving while its stream's queue is full is dropped (a gap in the stream's timeline, with its own
times on either side); a closed stream gives its pages back at the engine's next round, its upload
is deleted, and after ``grace_s`` it is forgotten (its id then answers 404).
"""

from __future__ import annotations

import collections
import contextlib
import queue
import shutil
import statistics
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from ..data.video import VideoError
from ..data.windows import FrameWindow, pace
from ..infer import SessionConfig, StreamEngine, StreamState
from ..infer.policy import MAX_QUESTION_TOKENS
from ..infer.stream import percentile
from .fanout import Viewers
from .loop import StepLoop
from .sources import FrameIntake, SourceError, read_windows

__all__ = ["Hub", "HubFull", "ServedStream"]


class HubFull(RuntimeError):
    """More streams than the server was started for."""


@dataclass
class ServedStream:
    id: str
    source: str  # "upload", "url" or "frames"
    state: StreamState
    viewers: Viewers
    intake: FrameIntake
    windows: queue.Queue = field(default_factory=lambda: queue.Queue(maxsize=2))
    questions: collections.deque = field(default_factory=collections.deque)  # checked, for the next window
    upload: Path | None = None  # the file it reads, deleted when it closes
    dropped_windows: int = 0
    error: str | None = None
    finished: bool = False  # the source ended
    closing: bool = False  # asked to close; the engine's thread closes it
    closed_at: float | None = None

    @property
    def closed(self) -> bool:
        return self.closed_at is not None


class Hub:
    def __init__(self, model, processor, *, max_streams: int = 8, config: SessionConfig | None = None,
                 upload_dir: str | Path | None = None, max_viewers: int = 16, grace_s: float = 60.0):
        self.engine = StreamEngine.of(model, processor)
        self.config = config if config is not None else SessionConfig.for_model(model)
        self.engine.warm_up(max_streams, max_tokens=_cache_bound(self.config, self.engine.spec))
        self.max_streams, self.max_viewers, self.grace_s = max_streams, max_viewers, grace_s
        self.own_upload_dir = upload_dir is None
        self.upload_dir = Path(upload_dir) if upload_dir else Path(tempfile.mkdtemp(prefix="livecc-uploads-"))
        self.upload_dir.mkdir(parents=True, exist_ok=True)
        self.streams: dict[str, ServedStream] = {}
        self.lock = threading.Lock()  # the registry only: never held while the engine steps
        self.latencies: collections.deque[float] = collections.deque(maxlen=1000)
        self.windows_done = self.stream_seconds = 0.0
        self.loop = StepLoop(self)

    # ------------------------------------------------------------------ streams

    def open(self, source: str, query: str = "", upload: Path | None = None) -> ServedStream:
        """A new stream; :class:`HubFull` past ``max_streams``, ValueError for a query that is not
        plain text within its token limit."""
        config = replace(self.config, query=query or self.config.query)
        with self.lock:
            if sum(not s.closing for s in self.streams.values()) >= self.max_streams:
                raise HubFull(f"the server serves at most {self.max_streams} streams at once")
            stream = ServedStream(uuid.uuid4().hex[:12], source, self.engine.open(config),
                                  Viewers(self.max_viewers), FrameIntake(config.plan), upload=upload)
            self.streams[stream.id] = stream
        return stream

    def get(self, stream_id: str) -> ServedStream | None:
        return self.streams.get(stream_id)

    def live_streams(self) -> list[ServedStream]:
        with self.lock:
            return [s for s in self.streams.values() if not s.closing]

    def read(self, stream: ServedStream, location: str, *, url: bool, realtime: bool = True,
             timeout: float = 10.0) -> None:
        """Feed ``stream`` from a file or URL in a thread, window by window, at real-time pace."""

        def reader():
            try:
                for window, _ in pace(read_windows(location, stream.state.config.plan, url=url, timeout=timeout),
                                      realtime=realtime):
                    if stream.closing:
                        return
                    self.enqueue(stream, window, wait=not realtime)
            except (VideoError, SourceError, OSError, ValueError) as e:
                self.fail(stream, "the source broke" if url else str(e).replace(str(self.upload_dir), "upload"))
            finally:
                stream.finished = True
                self.loop.wake.set()

        threading.Thread(target=reader, name=f"livecc-read-{stream.id}", daemon=True).start()

    def add_frame(self, stream: ServedStream, frame: torch.Tensor) -> None:
        """One frame sampled by the viewer at the plan's fps (uint8 ``[H, W, 3]``); a SourceError for
        one of another size than the stream's first."""
        for window in stream.intake.push(frame):
            self.enqueue(stream, window)

    def ask(self, stream: ServedStream, text) -> str:
        """Queue a question for the stream's next window, checked here (in the asker's thread): a
        ValueError for one that is not plain text within its token limit."""
        text = self.engine.policy.check_text(text, "a question", MAX_QUESTION_TOKENS)
        if not text:
            raise ValueError("a question needs some text")
        stream.questions.append(text)
        stream.viewers.publish({"type": "asked", "text": text})
        return text

    def close(self, stream: ServedStream) -> None:
        """Ask for the stream to end: at the engine's next round its pages go back to the pool, its
        viewers get the end event and its upload is deleted."""
        stream.closing = True
        self.loop.wake.set()

    def fail(self, stream: ServedStream, message: str) -> None:
        stream.error = message
        stream.viewers.publish({"type": "error", "message": message})
        self.close(stream)

    def enqueue(self, stream: ServedStream, window: FrameWindow, wait: bool = False) -> None:
        """Queue a window; a live source's window is dropped when the queue is full (the engine is
        behind), a file read as fast as possible waits for room instead."""
        try:
            if wait:
                while not stream.closing:
                    with contextlib.suppress(queue.Full):
                        stream.windows.put(window, timeout=0.5)
                        break
            else:
                stream.windows.put_nowait(window)
        except queue.Full:  # the engine is behind: this window is dropped, and said to be
            stream.dropped_windows += 1
            stream.viewers.publish({"type": "dropped", "start": window.start, "end": window.end})
        self.loop.wake.set()

    # ------------------------------------------------------------------ the engine's thread

    def said(self, stream: ServedStream, window: FrameWindow, result) -> None:
        self.latencies.append(result.timings["total"])
        self.windows_done += 1
        self.stream_seconds += window.end - window.start
        stream.viewers.publish({"type": "window", "index": result.index, "start": result.start, "end": result.end,
                                "text": result.text, "latency_ms": round(result.timings["total"], 1),
                                **({"asked": result.asked} if result.asked else {})})

    def housekeeping(self) -> None:
        """(The engine's thread, between rounds.) Close what was asked to close or has run out of
        windows, and forget streams closed for longer than the grace period."""
        now = time.monotonic()
        with self.lock:
            streams = list(self.streams.values())
        for stream in streams:
            if not stream.closed and (stream.closing or (stream.finished and stream.windows.empty())):
                self.engine.close(stream.state)
                stream.closing, stream.closed_at = True, now
                if stream.upload is not None:
                    stream.upload.unlink(missing_ok=True)
                stream.viewers.publish({"type": "end", "windows": len(stream.viewers.said),
                                        "dropped_windows": stream.dropped_windows,
                                        **({"error": stream.error} if stream.error else {})})
        with self.lock:
            for stream_id in [i for i, s in self.streams.items() if s.closed and now - s.closed_at > self.grace_s]:
                del self.streams[stream_id]

    # ------------------------------------------------------------------ the server

    def shutdown(self) -> None:
        for stream in list(self.streams.values()):
            self.close(stream)
        self.housekeeping()
        self.loop.stop()
        if self.own_upload_dir:
            shutil.rmtree(self.upload_dir, ignore_errors=True)

    def metrics(self) -> dict:
        lat = list(self.latencies)
        with self.lock:
            streams = list(self.streams.values())
        active = [s for s in streams if not s.closing]
        memory = torch.cuda.memory_allocated() / 2**30 if torch.cuda.is_available() else None
        pool = self.engine.pool
        return {"active_streams": len(active), "closed_streams": len(streams) - len(active),
                "max_streams": self.max_streams, "viewers": sum(s.viewers.count for s in streams),
                "windows": int(self.windows_done),
                "window_p50_ms": percentile(lat, 0.5) if lat else None,
                "window_p99_ms": percentile(lat, 0.99) if lat else None,
                "window_mean_ms": statistics.fmean(lat) if lat else None,
                "real_time_factor": self.loop.busy_seconds / self.stream_seconds if self.stream_seconds else None,
                "dropped_windows": sum(s.dropped_windows for s in streams),
                "dropped_events": sum(s.viewers.dropped for s in streams),
                "kv_pages_in_use": pool.pages_in_use, "kv_pages": pool.pages, "gpu_memory_gb": memory}

    def new_upload(self, suffix: str) -> Path:
        """A server-chosen path: nothing in a request decides where an upload is written."""
        safe = "".join(c for c in suffix.lower() if c.isalnum())[:8]
        return self.upload_dir / f"{uuid.uuid4().hex}.{safe or 'bin'}"


def _cache_bound(config: SessionConfig, spec) -> int:
    """The most tokens a stream's cache holds under ``config``'s bounds (4096 when text is
    unbounded): the pool is sized for it before the first window."""
    if config.max_text_tokens is None:
        return 4096
    per_second = config.max_pixels // spec.factor**2 * config.plan.fps / spec.temporal_patch_size
    seconds = config.horizon + config.plan.initial_frames / config.plan.fps
    return int(per_second * seconds) + config.text_sink + config.max_text_tokens + 64 + config.max_new_tokens
