"""Streaming sources and the real-time loop.

A source is anything FFmpeg (through PyAV) opens: a file, a URL (RTSP/HTTP/UDP), a pipe or a
capture device. Frames are sampled at the window plan's fps relative to the first frame and
grouped into its windows (:class:`~livecc.data.windows.Windower`), each carrying its times. In real
time a window is processed once its last frame is due (:func:`~livecc.data.windows.pace`); when the
model falls more than ``max_lag`` seconds behind, whole windows are dropped and counted: a dropped
window is a gap in the timeline, and the next window's ``Time=`` is still its own.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch

from ..data.video import FpsSampler, VideoError, pyav_frame_times
from ..data.windows import FrameWindow, Windower, WindowPlan, pace
from .session import StreamingSession
from .state import WindowResult

__all__ = ["StreamReport", "iter_windows", "percentile", "run_stream", "step_through"]


def iter_windows(source, plan: WindowPlan = WindowPlan(), *, format: str | None = None,
                 timeout: float | None = 10.0, rule: str = "reference",
                 ffmpeg_options: dict[str, str] | None = None) -> Iterator[FrameWindow]:
    """Yield the windows of ``source`` by ``plan`` as their frames arrive.

    ``timeout`` bounds, in seconds, the wait to open the source and for each read from it (a
    server that accepts and never answers is an error, not a hang); None waits forever. Frames
    are sampled by :class:`~livecc.data.video.FpsSampler` under ``rule``, times counted from the
    first frame. ``ffmpeg_options`` go to FFmpeg (a server's protocol and format whitelists)."""
    import av

    # Live input (pipe, URL, device): probe little, so the first window is not held back by
    # FFmpeg's stream analysis. Files keep the defaults (an mp4 index may sit anywhere).
    if hasattr(source, "fileno"):  # FFmpeg's pipe protocol returns whatever bytes have arrived
        source = f"pipe:{source.fileno()}"
    live = not (isinstance(source, str) and os.path.isfile(source))
    options = {"probesize": "65536", "analyzeduration": "500000"} if live else {}
    options.update(ffmpeg_options or {})
    try:
        container = av.open(source, format=format, options=options, timeout=timeout)
    except (av.error.FFmpegError, OSError) as e:
        raise VideoError(f"{source}: cannot open stream ({e})") from e
    with container:
        if not container.streams.video:
            raise VideoError(f"{source}: no video stream")
        stream = container.streams.video[0]
        sampler = FpsSampler(None, None, plan.fps, max_frames=2**62, rule=rule)
        times = pyav_frame_times(stream)
        windower, t0 = Windower(plan), None
        try:
            for frame in container.decode(stream):
                if frame.pts is None:
                    continue
                pts, end_ts = times(frame)
                t0 = pts if t0 is None else t0
                count = sampler.take(pts - t0, end_ts - t0)
                if count:
                    yield from windower.push(torch.from_numpy(frame.to_ndarray(format="rgb24")), count)
        except av.error.FFmpegError as e:
            raise VideoError(f"{source}: stream broke ({e})") from e


def step_through(session: StreamingSession, frames: torch.Tensor) -> Iterator[WindowResult]:
    """Comment on decoded frames ``[T, H, W, 3]`` window by window, as fast as the model goes (a
    clip shorter than the first window is one shorter window)."""
    for window in session.plan.windows(frames):
        yield session.step(window)


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


def run_stream(session: StreamingSession, windows: Iterator[FrameWindow], *, realtime: bool,
               max_lag: float = 1.0, on_result: Callable[[WindowResult], None] | None = None) -> StreamReport:
    """Comment on every window; in real time, wait for each window's last frame and drop windows
    (policy: drop) while more than ``max_lag`` seconds behind. Ctrl-C ends the stream with the
    report of what was done (``interrupted``)."""
    report = StreamReport()
    started = time.monotonic()
    try:
        for window, late in pace(windows, realtime=realtime):
            report.stream_seconds = window.end
            if session.window_index > 0 and late > max_lag:
                report.dropped += 1
                continue
            result = session.step(window)
            report.windows += 1
            report.latencies_ms.append(result.timings["total"])
            report.words += len(result.text.split())
            report.tokens += len(result.token_ids)
            report.decode_ms += result.timings["decode"]
            if on_result is not None:
                on_result(result)
    except KeyboardInterrupt:
        report.interrupted = True
    report.wall_seconds = time.monotonic() - started
    return report
