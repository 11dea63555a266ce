"""Where a served stream's frames come from, and what the server refuses at the door.

Sources are uploaded files, network URLs (read by a thread at real-time pace) and frames sent over
a WebSocket. Every one is checked before it becomes a stream: a container of a video format (a
text file is not a video, although FFmpeg opens it as one), frames within a size a server can
afford (:data:`MAX_SIDE`, :data:`MAX_PIXELS`), and for URLs a policy against reaching into the
server's own network: only http(s), rtsp and rtmp, and only public addresses after resolving the
name (loopback, private, link-local, multicast and reserved ones are refused unless the server
trusts its network); every refused or unreadable URL gets the same answer, so the server is no
port scanner. FFmpeg is held to the same rules (protocol and format whitelists: no local files, no
playlists that fetch more URLs, no listening sockets).
"""

from __future__ import annotations

import io
import ipaddress
import socket
import urllib.parse
from collections.abc import Iterator

import numpy as np
import torch
from PIL import Image

from ..data.windows import FrameWindow, Windower, WindowPlan
from ..infer import iter_windows

__all__ = ["MAX_PIXELS", "MAX_SIDE", "URL_ERROR", "FrameIntake", "SourceError", "SourcePolicy", "decode_frame",
           "probe", "read_windows"]

MAX_SIDE = 4096  # pixels on either side of a frame
MAX_PIXELS = 3840 * 2160  # pixels in a frame
URL_SCHEMES = ("http", "https", "rtsp", "rtmp")
URL_ERROR = "cannot read this URL as a video"  # the one answer for every refused or failed URL
# FFmpeg demuxers of video containers and streams; none reads other files or URLs by itself.
VIDEO_FORMATS = ("mov", "mp4", "m4a", "3gp", "3g2", "mj2", "matroska", "webm", "avi", "mpegts", "flv", "h264",
                 "hevc", "mjpeg", "mpjpeg", "mpeg", "mpegvideo", "m4v", "gif", "ogg", "asf", "ivf", "rtsp",
                 "yuv4mpegpipe")
FILE_OPTIONS = {"protocol_whitelist": "file", "format_whitelist": ",".join(VIDEO_FORMATS)}
URL_OPTIONS = {"protocol_whitelist": "http,https,tls,tcp,rtsp,rtsps,rtmp,rtmps",
               "format_whitelist": ",".join(VIDEO_FORMATS), "rtsp_transport": "tcp"}


class SourceError(ValueError):
    """A source the server will not read, with the message its requester gets."""


class SourcePolicy:
    """Which URLs a server reads: public http(s)/rtsp/rtmp addresses, or (``allow_private``, for
    a trusted network) any address."""

    def __init__(self, allow_private: bool = False):
        self.allow_private = allow_private

    def check(self, url) -> str:
        """``url`` if it may be read, else :class:`SourceError` with :data:`URL_ERROR`. Resolves the
        name (blocking: call it off the event loop)."""
        if not isinstance(url, str):
            raise SourceError("url must be text")
        parts = urllib.parse.urlsplit(url)
        if parts.scheme.lower() not in URL_SCHEMES or not parts.hostname:
            raise SourceError(f"url must be a network stream ({', '.join(s + '://' for s in URL_SCHEMES)})")
        if self.allow_private:
            return url
        try:
            addresses = {info[4][0] for info in socket.getaddrinfo(parts.hostname, parts.port or None)}
        except (OSError, UnicodeError, ValueError) as e:
            raise SourceError(URL_ERROR) from e
        for address in addresses:
            ip = ipaddress.ip_address(address.split("%")[0])
            if not ip.is_global or ip.is_multicast:
                raise SourceError(URL_ERROR)
        return url


def _open(location: str, url: bool, timeout: float):
    import av

    options = dict(URL_OPTIONS if url else FILE_OPTIONS)
    return av.open(location, options=options, timeout=timeout)


def probe(location: str, *, url: bool, timeout: float = 10.0) -> tuple[int, int]:
    """Open the source and decode its first frame: ``(height, width)``, or :class:`SourceError`
    saying why not (for a URL, always :data:`URL_ERROR`)."""
    import av

    try:
        with _open(location, url, timeout) as container:
            if not container.streams.video:
                raise SourceError("no video stream")
            frame = next(container.decode(video=0))
    except (av.error.FFmpegError, OSError, StopIteration, SourceError) as e:
        raise SourceError(URL_ERROR if url else f"not a readable video ({type(e).__name__})") from e
    check_size(frame.height, frame.width)
    return frame.height, frame.width


def check_size(height: int, width: int) -> None:
    if max(height, width) > MAX_SIDE or height * width > MAX_PIXELS:
        raise SourceError(f"frames of {width}x{height} are larger than this server takes (at most {MAX_SIDE} "
                          f"pixels a side and {MAX_PIXELS} in all)")


def read_windows(location: str, plan: WindowPlan, *, url: bool, timeout: float = 10.0) -> Iterator[FrameWindow]:
    """The source's windows, under the same FFmpeg rules as :func:`probe` (frames that outgrow the
    limits mid-stream end it)."""
    for window in iter_windows(location, plan, timeout=timeout,
                               ffmpeg_options=URL_OPTIONS if url else FILE_OPTIONS):
        check_size(*window.frames.shape[1:3])
        yield window


def decode_frame(data: bytes) -> torch.Tensor:
    """A JPEG (or PNG) frame sent by a viewer as uint8 ``[H, W, 3]``; its size is checked from the
    header, before anything is decoded."""
    try:
        image = Image.open(io.BytesIO(data))
        check_size(image.height, image.width)
        return torch.from_numpy(np.asarray(image.convert("RGB")).copy())
    except SourceError:
        raise
    except Exception as e:  # PIL raises many kinds for bad bytes
        raise SourceError(f"a frame that is not an image ({type(e).__name__})") from e


class FrameIntake:
    """A viewer's frames (sampled at the plan's fps) into windows; every frame of a stream has the
    size of its first."""

    def __init__(self, plan: WindowPlan):
        self.windower = Windower(plan)
        self.size: tuple[int, ...] | None = None

    def push(self, frame: torch.Tensor) -> list[FrameWindow]:
        if self.size is None:
            self.size = tuple(frame.shape)
        elif tuple(frame.shape) != self.size:
            raise SourceError(f"a frame of {frame.shape[1]}x{frame.shape[0]} in a stream of "
                              f"{self.size[1]}x{self.size[0]} frames")
        return self.windower.push(frame)
