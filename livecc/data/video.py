"""Decode a clip at 2 FPS and size its frames to the Qwen2-VL pixel budget.

Two sampling rules, both "strict" (a fixed frame rate, not a fixed frame count):

- ``"reference"`` (the default): the rule of the reference implementation, which the released
  Live-CC data and LiveCC checkpoints were made with. A frame's time is its *end* timestamp
  (pts + duration, decord's ``_frame_pts[:, 1]``); the clip keeps the frames timed within
  ``[start, end]`` (no or a zero start: from the first frame); targets ``t0 + k / fps`` run from the
  first kept frame's time ``t0``; each target takes the first kept frame timed at or after it. The
  arithmetic is the reference's under its pinned NumPy 1.24 (float32 times and bounds, float64
  targets); under NumPy 2 the reference's own code builds float32 targets and picks other frames.

Times count from the video stream's start time, as decord's do (an mpegts file or an mp4 without an
edit list starts after 0), whichever backend decodes.
- ``"clip-start"``: a frame's time is its presentation timestamp; targets ``start + k / fps``
  (below ``end``) run from the clip start; each takes the first frame at or after it.

Either way at most ``max_frames`` targets are kept and the count is padded to an even number by
repeating the last frame; the returned times are the frames' times under the rule, which word
assignment compares with word end times. Every backend streams its frames through one
:class:`FpsSampler`, so decord, PyAV and NVDEC select the same frames.
"""

from __future__ import annotations

import itertools
import logging
import math
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..kernels import resize_frames
from ..qwen_vl.vision import FRAME_FACTOR, PixelBudget, clip_frame_size

__all__ = [
    "BACKENDS",
    "FRAME_RULES",
    "FpsSampler",
    "VideoClip",
    "VideoError",
    "available_backends",
    "decode_clip",
    "pyav_frame_times",
]

log = logging.getLogger("livecc.video")

FPS = 2.0
_EPS = 1e-6  # seconds; absorbs float error in pts = pts_ticks * time_base
FRAME_RULES = ("reference", "clip-start")


class VideoError(RuntimeError):
    """A video that cannot be decoded; the message names the path."""


@dataclass
class VideoClip:
    frames: torch.Tensor  # uint8 [T, H, W, 3], T even
    pts: list[float]  # each frame's time under the sampling rule, seconds in the source video
    source: str
    backend: str
    cut_short: bool = False  # the video ended before the clip's end (by more than one sampling step)
    padded: int = 0  # frames repeated at the end to make the count even (not frames of the video)

    @property
    def real_frames(self) -> int:
        return len(self.pts) - self.padded


class FpsSampler:
    """Feed frames in presentation order; ``take(pts, end_ts)`` says how many targets the frame
    fills (0: not kept) and ``time(pts, end_ts)`` is the time the clip records for it. See the
    module docstring for the two rules."""

    def __init__(self, start: float | None, end: float | None, fps: float = FPS, max_frames: int = 480,
                 rule: str = "reference"):
        if rule not in FRAME_RULES:
            raise ValueError(f"frame rule must be one of {FRAME_RULES}, got {rule!r}")
        self.rule, self.fps, self.max_frames = rule, fps, max_frames
        self.end = math.inf if end is None else end
        self.start = start or 0.0
        if rule == "reference":  # numpy 1.x compared the record's bounds with float32 times in float32
            self.start, self.end = (float(np.float32(t)) for t in (self.start, self.end))
        self.filled = 0
        self.passed_end = False  # a frame timed after the clip's end was seen
        if rule == "clip-start":
            n = (self.end - self.start) * fps - _EPS
            self.n_targets = math.ceil(n) if math.isfinite(n) else math.inf
        else:
            self.first: float | None = None  # the first kept frame's time, where the targets start
            self.n_targets = math.inf  # bounded by the kept frames themselves

    def time(self, pts: float, end_ts: float) -> float:
        # The reference reads decord's float32 timestamps; its targets and comparisons are exact
        # float64 arithmetic on those values (numpy 1.x promotion), as here.
        return float(np.float32(end_ts)) if self.rule == "reference" else pts

    def take(self, pts: float, end_ts: float) -> int:
        t = self.time(pts, end_ts)
        if t > self.end + (_EPS if self.rule == "clip-start" else 0.0):
            self.passed_end = True
            return 0
        if self.rule == "clip-start":
            reached = math.floor((t + _EPS - self.start) * self.fps) + 1
        else:
            if t < self.start:  # the reference compares times exactly (video_start <= time)
                return 0
            self.first = t if self.first is None else self.first
            reached = self._targets_reached(t)
        reached = min(reached, self.n_targets, self.max_frames)
        count = max(0, reached - self.filled)
        self.filled += count
        return count

    def _targets_reached(self, t: float) -> int:
        """How many targets ``first + k * step`` (the reference's ``numpy.arange``) are ``<= t``."""
        step = 1 / self.fps
        k = math.floor((t - self.first) / step)
        while self.first + (k + 1) * step <= t:
            k += 1
        while k >= 0 and self.first + k * step > t:
            k -= 1
        return k + 1

    @property
    def done(self) -> bool:
        return self.passed_end or self.filled >= min(self.n_targets, self.max_frames)


# ---------------------------------------------------------------- backends
# Each yields (pts, end timestamp, get_frame) in presentation order; get_frame() -> uint8 [H, W, 3]
# tensor (on the decoder's device), called only for frames the sampler keeps.

FrameStream = Iterator[tuple[float, float, Callable[[], torch.Tensor]]]


def _pyav_frames(path: str, start: float, device: str) -> FrameStream:
    import av

    try:
        container = av.open(path)
    except av.error.FFmpegError as e:
        raise VideoError(f"{path}: cannot open video ({e})") from e
    with container:
        if not container.streams.video:
            raise VideoError(f"{path}: no video stream")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        times = pyav_frame_times(stream)
        try:
            for frame in _decode_from(container, stream, start, times):
                if frame.pts is None:
                    raise VideoError(f"{path}: frame without a presentation timestamp")
                yield *times(frame), lambda f=frame: torch.from_numpy(f.to_ndarray(format="rgb24"))
        except av.error.FFmpegError as e:
            raise VideoError(f"{path}: corrupt video ({e})") from e


def _decode_from(container, stream, start: float, times) -> Iterator:
    """The stream's frames from the last one starting before ``start`` (which may end after it): a
    seek before it, further back while the first frame decoded does not start before ``start`` (an
    mpegts seek lands near its target, not on a keyframe before it)."""
    if start <= 0 or stream.time_base is None:
        return container.decode(stream)
    origin, back = stream.start_time or 0, 0.0
    while True:
        target = max(0.0, start - back)
        container.seek(origin + int(target / stream.time_base), stream=stream, backward=True)
        frames = container.decode(stream)
        first = next(frames, None)
        if first is None:
            return iter(())
        if target == 0 or first.pts is None or times(first)[0] < start - _EPS:
            return itertools.chain([first], frames)
        back = max(1.0, 2 * back)


def pyav_frame_times(stream) -> Callable[[object], tuple[float, float]]:
    """``frame -> (pts, end timestamp)`` in seconds from the stream's start time, decord's origin
    (an mpegts or an mp4 without an edit list starts later than 0). The pts is exact; the end
    timestamp is computed as decord computes it (ticks from the start in float32, scaled in float64,
    stored as float32), so every backend sees decord's times. A frame without a duration lasts one
    frame period of the stream's average rate."""
    origin = stream.start_time or 0  # None: no start time declared; the timestamps are kept as they are
    base = stream.time_base
    rate = stream.average_rate or stream.guessed_rate
    period = 1 / rate if rate else 0

    def times(frame) -> tuple[float, float]:
        pts = float((frame.pts - origin) * base)
        if not frame.duration:
            return pts, pts + float(period)
        ticks = np.float32(frame.pts + frame.duration) - np.float32(origin)
        return pts, float(np.float32(float(ticks) * float(base)))

    return times


def _decord_frames(path: str, start: float, device: str) -> FrameStream:
    import decord

    try:
        reader = decord.VideoReader(path, ctx=decord.cpu(0), num_threads=2)
        times = reader.get_frame_timestamp(np.arange(len(reader)))
    except (decord.DECORDError, RuntimeError, ValueError) as e:
        raise VideoError(f"{path}: cannot decode video ({e})") from e
    if len(times) == 0:
        raise VideoError(f"{path}: no video frames")
    first = max(0, int(np.searchsorted(times[:, 0], start - _EPS)) - 1)
    for i in range(first, len(times)):
        yield float(times[i, 0]), float(times[i, 1]), lambda i=i: _decord_frame(reader, i, path)


def _decord_frame(reader, i: int, path: str) -> torch.Tensor:
    import decord

    try:
        return torch.from_numpy(reader[i].asnumpy())
    except (decord.DECORDError, RuntimeError, ValueError) as e:
        raise VideoError(f"{path}: cannot decode frame {i} ({e})") from e


def _nvdec_frames(path: str, start: float, device: str) -> FrameStream:
    """NVDEC through PyNvVideoCodec: frames decoded on the GPU, staying there as uint8 RGB. Times
    come from demuxing the packets with PyAV (no decoding); frame ``i`` of the decoder is the one
    with the ``i``-th smallest presentation timestamp, as in decord."""
    import av
    import PyNvVideoCodec as nvc

    try:
        with av.open(path) as container:
            if not container.streams.video:
                raise VideoError(f"{path}: no video stream")
            stream = container.streams.video[0]
            packets = sorted((p.pts, p.duration) for p in container.demux(stream) if p.pts is not None)
            times = pyav_frame_times(stream)
            rate = stream.average_rate or stream.guessed_rate
            spans = [times(_Packet(pts, duration)) for pts, duration in packets]
    except (av.error.FFmpegError, RuntimeError, ValueError) as e:
        raise VideoError(f"{path}: cannot decode video on NVDEC ({e})") from e
    try:
        decoder = nvc.SimpleDecoder(path, gpu_id=torch.device(device).index or 0, use_device_memory=True,
                                    output_color_type=nvc.OutputColorType.RGB)
    except Exception as e:  # PyNvVideoCodec raises bare Exceptions (a file of 0 frames, a codec it lacks)
        raise VideoError(f"{path}: cannot decode video on NVDEC ({type(e).__name__}: {e})") from e
    if len(decoder) != len(spans):
        raise VideoError(f"{path}: NVDEC sees {len(decoder)} frames, the demuxer {len(spans)} (rate {rate})")
    first = max(0, int(np.searchsorted([p for p, _ in spans], start - _EPS)) - 1)
    for i in range(first, len(spans)):
        yield *spans[i], lambda i=i: torch.from_dlpack(decoder[i]).to(device)


class _Packet:
    """What :func:`pyav_frame_times` reads of a frame, for a packet's timestamps."""

    def __init__(self, pts: int, duration: int | None):
        self.pts, self.duration = pts, duration


BACKENDS: dict[str, Callable[[str, float, str], FrameStream]] = {
    "nvdec": _nvdec_frames,
    "decord": _decord_frames,
    "pyav": _pyav_frames,
}
_MODULES = {"nvdec": "PyNvVideoCodec", "decord": "decord", "pyav": "av"}


def backend_status() -> dict[str, str | None]:
    """Each backend's import error, or None when it imports here."""
    import importlib

    status = {}
    for name, module in _MODULES.items():
        try:
            importlib.import_module(module)
            status[name] = None
        except Exception as e:  # a broken install (native libraries that do not load) is "not available"
            status[name] = f"{type(e).__name__}: {e}".splitlines()[0][:200]
    return status


def available_backends() -> list[str]:
    """Backends whose libraries import here."""
    return [name for name, error in backend_status().items() if error is None]


def _choose_backend(backend: str, device: str) -> str:
    status = backend_status()
    if backend != "auto":
        if backend not in BACKENDS:
            raise ValueError(f"unknown video backend {backend!r}; choose from {sorted(BACKENDS)}")
        if status[backend] is not None:
            raise VideoError(f"video backend {backend!r} is not available ({status[backend]})")
        return backend
    if device != "cpu":
        if status["nvdec"] is None:
            return "nvdec"
        log.warning("GPU decoding unavailable, decoding on CPU: PyNvVideoCodec %s", status["nvdec"])
    for name in ("decord", "pyav"):
        if status[name] is None:
            return name
    raise VideoError("no video backend installed: pip install 'livecc[video]'")


def _open(name: str, source: str, start: float, device: str, auto: bool) -> tuple[str, FrameStream]:
    """The backend's frame stream, opened. A file NVDEC cannot take (a codec or profile the GPU's
    decoder lacks) falls back to a CPU backend when the backend was chosen automatically."""
    stream = BACKENDS[name](source, start, device)
    if not (auto and name == "nvdec"):
        return name, stream
    try:
        first = next(stream)
    except StopIteration:
        return name, iter(())
    except VideoError as e:
        cpu = _choose_backend("auto", "cpu")
        log.warning("%s; decoding on CPU with %s", e, cpu)
        return cpu, BACKENDS[cpu](source, start, device)
    return name, itertools.chain([first], stream)


def decode_clip(
    path: str | os.PathLike,
    start: float | None = None,
    end: float | None = None,
    *,
    fps: float = FPS,
    backend: str = "auto",
    resize: bool = True,
    budget: PixelBudget = PixelBudget(),
    device: str = "cpu",
    rule: str = "reference",
) -> VideoClip:
    """Frames of ``[start, end]`` at ``fps`` under the sampling ``rule``, resized to the clip's
    budget when ``resize``.

    ``device="cuda"`` decodes on NVDEC (PyNvVideoCodec, the ``gpu`` extra) when it is installed
    and takes the file (else on CPU, with a logged reason) and returns the frames on that device.
    """
    source = str(path)
    if not Path(source).is_file():
        raise VideoError(f"{source}: video file not found")
    for name, value in (("start", start), ("end", end)):
        if value is not None and not math.isfinite(value):
            raise VideoError(f"{source}: clip {name} is not finite ({value})")
    if start is not None and end is not None and end <= start:
        raise VideoError(f"{source}: empty clip [{start}, {end}]")
    name, stream = _open(_choose_backend(backend, device), source, start or 0.0, device, backend == "auto")
    log.info("decoding %s with %s", source, name)
    sampler = FpsSampler(start, end, fps, budget.max_frames, rule)
    frames, times, exhausted = [], [], True
    for pts, end_ts, get_frame in stream:
        count = sampler.take(pts, end_ts)
        if count:
            frame = get_frame()
            if frame.ndim != 3 or frame.shape[-1] != 3 or frame.dtype != torch.uint8:
                raise VideoError(f"{source}: {name} returned a frame of shape {tuple(frame.shape)} "
                                 f"({frame.dtype}), not uint8 [H, W, 3]")
            frames.extend([frame] * count)
            times.extend([sampler.time(pts, end_ts)] * count)
        if sampler.done:
            exhausted = False
            break
    if not frames:
        raise VideoError(f"{source}: no frames in [{start}, {end}]")
    padded = -len(frames) % FRAME_FACTOR
    frames += frames[-1:] * padded
    times += times[-1:] * padded
    video = torch.stack(frames).to(device)
    if resize:
        try:
            size = clip_frame_size(video.shape[1], video.shape[2], len(frames), budget)
        except ValueError as e:
            raise VideoError(f"{source}: {e}") from e
        video = resize_frames(video, size)
    cut_short = exhausted and end is not None and times[-1] < end - 1 / fps
    return VideoClip(frames=video, pts=times, source=source, backend=name, cut_short=cut_short, padded=padded)
