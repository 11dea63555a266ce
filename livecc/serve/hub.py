"""Many viewers on one streaming engine: the streams a server holds, their sources, and their lives.

A served stream is fed by a source (:mod:`.sources`: an uploaded file or a URL read by a thread at
real-time pace, or frames over a WebSocket) into a bounded queue of windows; one engine thread
(:mod:`.loop`) steps every stream that has a window together, so N viewers cost one batched step;
its events go out to the stream's viewers (:mod:`.fanout`). Policies, all counted: a stream's slot
is reserved before anything of it is received, and held until its resources (pages, reader thread,
decoders, upload) are given back; a live window arriving while its stream's queue is full is
dropped (a gap in the stream's timeline, with its own times on either side), and frames sent
faster than the stream's frame rate are dropped before they are decoded, for that stream only; a
stream whose viewer sends nothing for ``idle_s`` is closed with an event saying so; a closed
stream gives its pages back at the engine's next round, its upload is deleted, and after
``grace_s`` it is forgotten (its id then answers 404).
"""

from __future__ import annotations

import collections
import contextlib
import queue
import statistics
import threading
import time
import uuid
from dataclasses import replace
from pathlib import Path

import torch

from ..data.video import VideoError
from ..data.windows import FrameWindow, pace
from ..infer import SessionConfig, StreamEngine
from ..infer.policy import MAX_QUESTION_TOKENS
from ..infer.stream import percentile
from .fanout import Viewers
from .loop import StepLoop
from .served import FrameRate, HubFull, Reservation, ServedStream, UploadDir
from .sources import FrameIntake, Location, SourceError, read_windows

__all__ = ["Hub", "HubFull", "ServedStream"]


class Hub:
    def __init__(self, model, processor, *, max_streams: int = 8, config: SessionConfig | None = None,
                 upload_dir: str | Path | None = None, max_viewers: int = 16, grace_s: float = 60.0,
                 idle_s: float = 30.0):
        self.engine = StreamEngine.of(model, processor)
        self.config = config if config is not None else SessionConfig.for_model(model)
        self.engine.warm_up(max_streams, max_tokens=self.config.cache_tokens(self.engine.spec))
        self.max_streams, self.max_viewers, self.grace_s, self.idle_s = max_streams, max_viewers, grace_s, idle_s
        self.reserved = 0  # slots taken by streams still being received
        self.uploads = UploadDir(upload_dir)
        self.streams: dict[str, ServedStream] = {}
        self.lock = threading.Lock()  # the registry only: never held while the engine steps
        self.latencies: collections.deque[float] = collections.deque(maxlen=1000)
        self.windows_done = self.stream_seconds = 0.0
        self.loop = StepLoop(self.engine, self)

    # ------------------------------------------------------------------ streams

    def reserve(self) -> Reservation:
        """A stream slot, before anything of the stream is received; :class:`HubFull` when every
        slot is held (by a stream, or one whose resources are still being given back)."""
        with self.lock:
            if self._held() >= self.max_streams:
                raise HubFull(f"the server serves at most {self.max_streams} streams at once")
            self.reserved += 1
        return Reservation(self._unreserve)

    def _held(self) -> int:  # (under the lock) slots held by streams and reservations
        return sum(s.holds_slot for s in self.streams.values()) + self.reserved

    def held(self) -> int:
        with self.lock:
            return self._held()

    def _unreserve(self) -> None:
        with self.lock:
            self.reserved -= 1

    def open(self, slot: Reservation, source: str, query: str = "", upload: Path | None = None) -> ServedStream:
        """A new stream in the ``slot`` reserved for it (given back on failure); ValueError for a
        query that is not plain text within its token limit."""
        try:
            config = replace(self.config, query=query or self.config.query)
            stream = ServedStream(uuid.uuid4().hex[:12], source, self.engine.open(config),
                                  Viewers(self.max_viewers), FrameIntake(config.plan), FrameRate.of(config.plan),
                                  upload=upload)
        except BaseException:
            slot.release()
            raise
        with self.lock:
            self.streams[stream.id] = stream
            slot.taken, self.reserved = True, self.reserved - 1
        return stream

    def get(self, stream_id: str) -> ServedStream | None:
        return self.streams.get(stream_id)

    def live_streams(self) -> list[ServedStream]:
        with self.lock:
            return [s for s in self.streams.values() if not s.closing]

    def read(self, stream: ServedStream, location: Location, *, realtime: bool = True, timeout: float = 10.0) -> None:
        """Feed ``stream`` from a file or URL in a thread, window by window, at real-time pace. The
        source (FFmpeg's container and decoders) is closed as soon as the stream closes."""

        def reader():
            try:
                with contextlib.closing(read_windows(location, stream.state.config.plan, timeout=timeout)) as windows:
                    for window, _ in pace(windows, realtime=realtime, stop=stream.stop):
                        if stream.closing:
                            return
                        stream.last_input = time.monotonic()
                        self.enqueue(stream, window, wait=not realtime)
            except (VideoError, SourceError, OSError, ValueError) as e:
                self.fail(stream, "the source broke" if location.url else
                          str(e).replace(str(self.upload_dir), "upload"))
            finally:
                stream.finished = True
                self.loop.wake.set()

        stream.reader = threading.Thread(target=reader, name=f"livecc-read-{stream.id}", daemon=True)
        stream.reader.start()

    def add_frame(self, stream: ServedStream, frame: torch.Tensor) -> None:
        """One frame sampled by the viewer at the plan's fps (uint8 ``[H, W, 3]``); a SourceError for
        one of another size than the stream's first."""
        for window in stream.intake.push(frame):
            self.enqueue(stream, window)

    def take_frame(self, stream: ServedStream) -> bool:
        """Whether a viewer's frame arriving now is within its stream's frame rate (the plan's fps,
        a first window's frames at once); one past it is dropped and counted, undecoded."""
        return stream.take_frame()

    def frame_wait(self, stream: ServedStream) -> float:
        """Seconds until the stream's next frame is within its frame rate."""
        return stream.rate.wait_s()

    def ask(self, stream: ServedStream, text) -> str:
        """Queue a question for the stream's next window, checked here (in the asker's thread): a
        ValueError for one that is not plain text within its token limit."""
        text = self.engine.policy.check_text(text, "a question", MAX_QUESTION_TOKENS)
        if not text:
            raise ValueError("a question needs some text")
        stream.questions.append(text)
        stream.viewers.publish({"type": "asked", "text": text})
        return text

    def finish(self, stream: ServedStream) -> None:
        """No more frames will come: the windows received are said, then the stream ends."""
        stream.finished = True
        self.loop.wake.set()

    def close(self, stream: ServedStream) -> None:
        """Ask for the stream to end: at the engine's next round its pages go back to the pool, its
        viewers get the end event and its upload is deleted."""
        stream.stop.set()
        self.loop.wake.set()

    def fail(self, stream: ServedStream, message: str) -> None:
        stream.error = message
        stream.viewers.publish({"type": "error", "message": message})
        self.close(stream)

    def enqueue(self, stream: ServedStream, window: FrameWindow, wait: bool = False) -> None:
        """Queue a window; a live source's window is dropped when the queue is full (the engine is
        behind), a file read as fast as possible waits for room instead."""
        item = (window, time.monotonic())
        try:
            if wait:
                while not stream.closing:
                    with contextlib.suppress(queue.Full):
                        stream.windows.put(item, timeout=0.05)
                        break
            else:
                stream.windows.put_nowait(item)
        except queue.Full:  # the engine is behind: this window is dropped, and said to be
            stream.dropped_windows += 1
            stream.outcomes.append(False)
            stream.viewers.publish({"type": "dropped", "start": window.start, "end": window.end})
        self.loop.wake.set()

    # ------------------------------------------------------------------ the engine's thread

    def said(self, stream: ServedStream, window: FrameWindow, result, arrived: float) -> None:
        stream.lags.append(time.monotonic() - arrived)
        stream.outcomes.append(True)
        self.latencies.append(result.timings["total"])
        self.windows_done += 1
        self.stream_seconds += window.end - window.start
        stream.viewers.publish({"type": "window", "index": result.index, "start": result.start, "end": result.end,
                                "text": result.text, "latency_ms": round(result.timings["total"], 1),
                                **({"asked": result.asked} if result.asked else {})})

    def housekeeping(self) -> None:
        """(The engine's thread, between rounds.) Close what was asked to close, has run out of
        windows or has been idle too long, and forget streams closed for longer than the grace
        period (and whose reader has ended)."""
        now = time.monotonic()
        with self.lock:
            streams = list(self.streams.values())
        for stream in streams:
            if stream.source == "frames" and not stream.closing and now - stream.last_input > self.idle_s:
                self.fail(stream, f"no frames for {self.idle_s:g} s: the stream is closed")
            if not stream.closed and (stream.closing or (stream.finished and stream.windows.empty())):
                self.engine.close(stream.state)
                stream.stop.set()
                stream.closed_at = now
                if stream.upload is not None:
                    stream.upload.unlink(missing_ok=True)
                stream.viewers.publish({"type": "end", "windows": len(stream.viewers.said),
                                        "dropped_windows": stream.dropped_windows,
                                        "dropped_frames": stream.dropped_frames,
                                        **({"error": stream.error} if stream.error else {})})
        with self.lock:
            for stream_id in [i for i, s in self.streams.items()
                              if s.closed and not s.holds_slot and now - s.closed_at > self.grace_s]:
                del self.streams[stream_id]

    # ------------------------------------------------------------------ the server

    def shutdown(self) -> None:
        for stream in list(self.streams.values()):
            self.close(stream)
        self.housekeeping()
        self.loop.stop()
        self.uploads.remove()

    def health(self) -> dict:
        return {"engine": self.loop.thread.is_alive()}

    def metrics(self) -> dict:
        lat = list(self.latencies)
        with self.lock:
            streams = list(self.streams.values())
        active = [s for s in streams if not s.closing]
        memory = torch.cuda.memory_allocated() / 2**30 if torch.cuda.is_available() else None
        pool = self.engine.pool
        plan = self.config.plan
        per_stream = [s.figures(plan.frames_per_window / plan.fps) for s in active]
        return {"active_streams": len(active), "closed_streams": len(streams) - len(active),
                "streams_holding_slots": sum(s.holds_slot for s in streams), "max_streams": self.max_streams,
                "viewers": sum(s.viewers.count for s in streams),
                "holds_real_time": all(f["real_time"] for f in per_stream), "streams": per_stream,
                "windows": int(self.windows_done),
                "window_p50_ms": percentile(lat, 0.5) if lat else None,
                "window_p99_ms": percentile(lat, 0.99) if lat else None,
                "window_mean_ms": statistics.fmean(lat) if lat else None,
                "real_time_factor": self.loop.busy_seconds / self.stream_seconds if self.stream_seconds else None,
                "dropped_windows": sum(s.dropped_windows for s in streams),
                "dropped_frames": sum(s.dropped_frames for s in streams),
                "dropped_events": sum(s.viewers.dropped for s in streams),
                "kv_pages_in_use": pool.pages_in_use, "kv_pages": pool.pages, "gpu_memory_gb": memory}

    def new_upload(self, suffix: str) -> Path:
        return self.uploads.new(suffix)

    @property
    def upload_dir(self) -> Path:
        return self.uploads.path
