"""Streaming sources and the real-time loop.

A source is anything FFmpeg (through PyAV) opens: a file, a URL (RTSP/HTTP/UDP), a pipe or a
capture device. Frames are sampled at strict 2 FPS relative to the first frame and grouped into
windows (6 frames, then 2). In real time, a window is processed once its last frame is due; when
the model falls more than ``max_lag`` seconds behind, whole windows are dropped (the session's
clock skips them, so ``Time=`` stays true) and counted. Nothing drifts silently.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch

from ..data.video import FPS, FpsSampler, VideoError, pyav_frame_times
from .engine import WindowResult
from .session import StreamingSession

__all__ = ["StreamReport", "iter_windows", "percentile", "run_stream", "step_through"]


def iter_windows(source, *, fps: float = FPS, initial_frames: int = 6, streaming_frames: int = 2,
                 format: str | None = None, timeout: float | None = 10.0,
                 rule: str = "reference") -> Iterator[tuple[torch.Tensor, float]]:
    """Yield ``(frames uint8 [T, H, W, 3], window end in stream seconds)`` as frames arrive.

    ``timeout`` bounds, in seconds, the wait to open the source and for each read from it (a
    server that accepts and never answers is an error, not a hang); None waits forever. Frames
    are sampled by :class:`~livecc.data.video.FpsSampler` under ``rule``, times counted from the
    first frame."""
    import av

    # Live input (pipe, URL, device): probe little, so the first window is not held back by
    # FFmpeg's stream analysis. Files keep the defaults (an mp4 index may sit anywhere).
    if hasattr(source, "fileno"):  # FFmpeg's pipe protocol returns whatever bytes have arrived
        source = f"pipe:{source.fileno()}"
    live = not (isinstance(source, str) and os.path.isfile(source))
    options = {"probesize": "65536", "analyzeduration": "500000"} if live else {}
    try:
        container = av.open(source, format=format, options=options, timeout=timeout)
    except (av.error.FFmpegError, OSError) as e:
        raise VideoError(f"{source}: cannot open stream ({e})") from e
    with container:
        if not container.streams.video:
            raise VideoError(f"{source}: no video stream")
        stream = container.streams.video[0]
        sampler = FpsSampler(None, None, fps, max_frames=2**62, rule=rule)
        times = pyav_frame_times(stream)
        buffer: list[torch.Tensor] = []
        t0, need, n_sampled = None, initial_frames, 0
        try:
            for frame in container.decode(stream):
                if frame.pts is None:
                    continue
                pts, end_ts = times(frame)
                t0 = pts if t0 is None else t0
                count = sampler.take(pts - t0, end_ts - t0)
                if not count:
                    continue
                image = torch.from_numpy(frame.to_ndarray(format="rgb24"))
                buffer += [image] * count
                while len(buffer) >= need:
                    n_sampled += need
                    yield torch.stack(buffer[:need]), n_sampled / fps
                    buffer, need = buffer[need:], streaming_frames
        except av.error.FFmpegError as e:
            raise VideoError(f"{source}: stream broke ({e})") from e


def step_through(session: StreamingSession, frames: torch.Tensor) -> Iterator[WindowResult]:
    """Comment on decoded frames ``[T, H, W, 3]`` window by window, as fast as the model goes (a
    clip shorter than the first window is one shorter window)."""
    while len(frames):
        n = min(session.frames_needed, len(frames))
        yield session.step(frames[:n])
        frames = frames[n:]


def percentile(values: list[float], q: float) -> float:
    """The ``q`` quantile by rank (nan when empty)."""
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))] if values else float("nan")


@dataclass
class StreamReport:
    windows: int = 0
    dropped: int = 0
    stream_seconds: float = 0.0
    wall_seconds: float = 0.0
    latencies_ms: list[float] = field(default_factory=list)
    words: int = 0
    tokens: int = 0
    decode_ms: float = 0.0
    interrupted: bool = False  # stopped by Ctrl-C; the figures cover the windows done until then

    def summary(self) -> dict:
        lat = self.latencies_ms
        busy = sum(lat) / 1e3
        return {
            "windows": self.windows, "dropped": self.dropped, "stream_s": round(self.stream_seconds, 2),
            "wall_s": round(self.wall_seconds, 2), "p50_ms": round(percentile(lat, 0.5), 1),
            "p99_ms": round(percentile(lat, 0.99), 1),
            "mean_ms": round(statistics.fmean(lat), 1) if lat else float("nan"),
            "real_time_factor": round(busy / self.stream_seconds, 3) if self.stream_seconds else float("nan"),
            "words": self.words,
            "tokens_per_s": round(self.tokens * 1e3 / self.decode_ms, 1) if self.decode_ms else float("nan"),
            **({"interrupted": True} if self.interrupted else {}),
        }


def run_stream(session: StreamingSession, windows: Iterator[tuple[torch.Tensor, float]], *, realtime: bool,
               max_lag: float = 1.0, on_result: Callable[[WindowResult], None] | None = None) -> StreamReport:
    """Comment on every window; in real time, wait for each window's last frame and drop windows
    (policy: drop) while more than ``max_lag`` seconds behind. Ctrl-C ends the stream with the
    report of what was done (``interrupted``)."""
    report = StreamReport()
    started = time.monotonic()
    try:
        _comment(session, windows, realtime, max_lag, on_result, report, started)
    except KeyboardInterrupt:
        report.interrupted = True
    report.wall_seconds = time.monotonic() - started
    return report


def _comment(session, windows, realtime, max_lag, on_result, report: StreamReport, started: float) -> None:
    wall0 = None  # wall time of stream second 0
    for frames, t_end in windows:
        if wall0 is None:  # a live source's first window arrives when it is due, a file's at once
            wall0 = max(started, time.monotonic() - t_end)
        if realtime:
            due = wall0 + t_end
            if (wait := due - time.monotonic()) > 0:
                time.sleep(wait)
            if session.window_index > 0 and time.monotonic() - due > max_lag:
                session.skip(len(frames) / session.fps)
                report.dropped += 1
                report.stream_seconds = t_end
                continue
        result = session.step(frames)
        report.windows += 1
        report.latencies_ms.append(result.timings["total"])
        report.words += len(result.text.split())
        report.tokens += len(result.token_ids)
        report.decode_ms += result.timings["decode"]
        report.stream_seconds = t_end
        if on_result is not None:
            on_result(result)
