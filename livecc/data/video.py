"""Decode a clip at strict 2 FPS and size its frames to the Qwen2-VL pixel budget.

Strict sampling (SPEC section 4): for every target time ``t`` in ``arange(start, end, 1/fps)`` take
the first frame whose presentation time is ``>= t`` (and ``<= end``), then pad to an even count
by repeating the last frame. Every backend streams its frames through one :class:`StrictFpsSampler`,
so decord, PyAV and torchcodec select the same frames.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..kernels.preprocess.reference import resize_frames

__all__ = [
    "BACKENDS",
    "PixelBudget",
    "StrictFpsSampler",
    "VideoClip",
    "VideoError",
    "available_backends",
    "clip_frame_size",
    "decode_clip",
    "resize_frames",
    "smart_resize",
]

log = logging.getLogger("livecc.video")

FPS = 2.0
FRAME_FACTOR = 2  # Qwen2-VL's temporal patch: frames come in pairs
IMAGE_FACTOR = 28  # 14-pixel patches merged 2x2
_EPS = 1e-6  # seconds; absorbs float error in pts = pts_ticks * time_base


class VideoError(RuntimeError):
    """A video that cannot be decoded; the message names the path."""


@dataclass(frozen=True)
class PixelBudget:
    """SPEC section 4: per-frame and per-clip pixel limits and the frame cap (240 s at 2 FPS)."""

    min_pixels: int = 100 * 28 * 28
    max_pixels: int = 768 * 28 * 28
    total_pixels: int = 24576 * 28 * 28
    max_frames: int = 480

    def frame_max_pixels(self, nframes: int) -> float:
        per_frame = self.total_pixels / max(nframes, 1) * FRAME_FACTOR
        return max(min(self.max_pixels, per_frame), int(self.min_pixels * 1.05))


@dataclass
class VideoClip:
    frames: torch.Tensor  # uint8 [T, H, W, 3], T even
    pts: list[float]  # presentation time of each frame, seconds in the source video
    source: str
    backend: str


def smart_resize(height: int, width: int, factor: int = IMAGE_FACTOR, min_pixels: float = 100 * 28 * 28,
                 max_pixels: float = 768 * 28 * 28) -> tuple[int, int]:
    """Qwen2-VL's resize rule: both sides multiples of ``factor``, area within the bounds, aspect kept."""
    if min(height, width) <= 0:
        raise ValueError(f"frame size must be positive, got {height}x{width}")
    if max(height, width) / min(height, width) > 200:
        raise ValueError(f"aspect ratio over 200 is not supported: {height}x{width}")
    h_bar = max(factor, round(height / factor) * factor)
    w_bar = max(factor, round(width / factor) * factor)
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


def clip_frame_size(height: int, width: int, nframes: int, budget: PixelBudget = PixelBudget()) -> tuple[int, int]:
    """The ``(h, w)`` every frame of an ``nframes`` clip is resized to."""
    return smart_resize(height, width, IMAGE_FACTOR, budget.min_pixels, budget.frame_max_pixels(nframes))


class StrictFpsSampler:
    """Feed frames in presentation order; ``take(pts)`` says how many targets this frame fills.

    A frame fills every target ``t_k = start + k / fps`` (``t_k < end``) with ``prev_pts < t_k <= pts``,
    i.e. it is the first frame at or after ``t_k``. Frames after ``end`` fill none.
    """

    def __init__(self, start: float, end: float, fps: float = FPS, max_frames: int = 480):
        self.start, self.end, self.fps, self.max_frames = start, end, fps, max_frames
        self.n_targets = math.ceil((end - start) * fps - _EPS) if math.isfinite(end) else math.inf
        self.filled = 0

    def take(self, pts: float) -> int:
        if pts > self.end + _EPS:
            return 0
        reached = min(math.floor((pts + _EPS - self.start) * self.fps) + 1, self.n_targets, self.max_frames)
        count = max(0, reached - self.filled)
        self.filled += count
        return count

    @property
    def done(self) -> bool:
        return self.filled >= min(self.n_targets, self.max_frames)


# ---------------------------------------------------------------- backends
# Each yields (pts, get_frame) in presentation order; get_frame() -> uint8 [H, W, 3] tensor (on the
# decoder's device), called only for frames the sampler keeps.

FrameStream = Iterator[tuple[float, Callable[[], torch.Tensor]]]


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
        if start > 0 and stream.time_base is not None:
            container.seek(int(start / stream.time_base), stream=stream, backward=True)
        try:
            for frame in container.decode(stream):
                if frame.pts is None:
                    raise VideoError(f"{path}: frame without a presentation timestamp")
                pts = float(frame.pts * stream.time_base)
                yield pts, lambda f=frame: torch.from_numpy(f.to_ndarray(format="rgb24"))
        except av.error.FFmpegError as e:
            raise VideoError(f"{path}: corrupt video ({e})") from e


def _decord_frames(path: str, start: float, device: str) -> FrameStream:
    import decord

    try:
        reader = decord.VideoReader(path, ctx=decord.cpu(0), num_threads=2)
        pts = reader.get_frame_timestamp(np.arange(len(reader)))[:, 0]
    except (decord.DECORDError, RuntimeError) as e:
        raise VideoError(f"{path}: cannot decode video ({e})") from e
    if len(pts) == 0:
        raise VideoError(f"{path}: no video frames")
    first = max(0, int(np.searchsorted(pts, start - _EPS)) - 1)
    for i in range(first, len(pts)):
        yield float(pts[i]), lambda i=i: torch.from_numpy(reader[i].asnumpy())


def _torchcodec_frames(path: str, start: float, device: str) -> FrameStream:
    from torchcodec.decoders import VideoDecoder

    try:
        decoder = VideoDecoder(path, device=device, seek_mode="exact", dimension_order="NHWC")
        stop = decoder.metadata.end_stream_seconds
    except (RuntimeError, ValueError) as e:
        raise VideoError(f"{path}: cannot decode video ({e})") from e
    chunk = 8.0  # seconds per batched retrieval: bounds memory at 1080p
    t = max(0.0, start - 1.0 / FPS)
    while t < stop:
        batch = decoder.get_frames_played_in_range(t, min(t + chunk, stop))
        for k, p in enumerate(batch.pts_seconds.tolist()):
            yield p, lambda k=k, b=batch: b.data[k]
        t += chunk


BACKENDS: dict[str, Callable[[str, float, str], FrameStream]] = {
    "torchcodec": _torchcodec_frames,
    "decord": _decord_frames,
    "pyav": _pyav_frames,
}
_MODULES = {"torchcodec": "torchcodec.decoders", "decord": "decord", "pyav": "av"}


def backend_status() -> dict[str, str | None]:
    """Each backend's import error, or None when it imports here."""
    import importlib

    status = {}
    for name, module in _MODULES.items():
        try:
            importlib.import_module(module)
            status[name] = None
        except Exception as e:  # a broken install (e.g. torchcodec without CUDA torch) is "not available"
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
        if status["torchcodec"] is None:
            return "torchcodec"
        log.warning("GPU decoding unavailable, decoding on CPU: torchcodec %s", status["torchcodec"])
    for name in ("decord", "pyav", "torchcodec"):
        if status[name] is None:
            return name
    raise VideoError("no video backend installed: pip install 'livecc[video]'")


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
) -> VideoClip:
    """Frames of ``[start, end]`` at strict ``fps``, resized to the clip's budget when ``resize``.

    ``device="cuda"`` decodes with torchcodec on NVDEC when it is installed (else on CPU, with a
    logged reason) and returns the frames on that device.
    """
    source = str(path)
    if not Path(source).is_file():
        raise VideoError(f"{source}: video file not found")
    for name, value in (("start", start), ("end", end)):
        if value is not None and not math.isfinite(value):
            raise VideoError(f"{source}: clip {name} is not finite ({value})")
    start = 0.0 if start is None else float(start)
    end = math.inf if end is None else float(end)
    if end <= start:
        raise VideoError(f"{source}: empty clip [{start}, {end}]")
    name = _choose_backend(backend, device)
    log.info("decoding %s with %s", source, name)
    sampler = StrictFpsSampler(start, end, fps, budget.max_frames)
    frames, pts = [], []
    for p, get_frame in BACKENDS[name](source, start, device):
        count = sampler.take(p)
        if count:
            frame = get_frame()
            frames.extend([frame] * count)
            pts.extend([p] * count)
        if sampler.done or p > end + _EPS:
            break
    if not frames:
        raise VideoError(f"{source}: no frames in [{start}, {end}]")
    while len(frames) % FRAME_FACTOR:
        frames.append(frames[-1])
        pts.append(pts[-1])
    video = torch.stack(frames).to(device)
    if resize:
        video = resize_frames(video, clip_frame_size(video.shape[1], video.shape[2], len(frames), budget))
    return VideoClip(frames=video, pts=pts, source=source, backend=name)
