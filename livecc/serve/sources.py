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
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image

from ..data.windows import FrameWindow, Windower, WindowPlan
from ..infer import iter_windows

__all__ = ["MAX_PIXELS", "MAX_SIDE", "URL_ERROR", "FrameIntake", "Location", "SourceError", "SourcePolicy",
           "decode_frame", "is_public", "probe", "read_windows"]

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


@dataclass(frozen=True)
class Location:
    """What FFmpeg is given for a source: where it reads, and its options for that read."""

    where: str
    options: dict = field(default_factory=lambda: dict(FILE_OPTIONS))
    url: bool = False


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 one carries (mapped, IPv4-compatible, 6to4, NAT64, Teredo's
    client), which is where a packet to it may end up."""
    if ip.ipv4_mapped or ip.sixtofour:
        return ip.ipv4_mapped or ip.sixtofour
    if ip.teredo:
        return ip.teredo[1]
    if any(ip in net for net in _CARRIES_IPV4):
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


# IPv6 prefixes whose last 32 bits are an IPv4 address: IPv4-compatible (::/96), NAT64 (RFC 6052, 8215)
_CARRIES_IPV4 = [ipaddress.ip_network(n) for n in ("::/96", "64:ff9b::/96", "64:ff9b:1::/48")]
# Python's ``is_global`` misses these (IETF protocol assignments, local-use NAT64)
_NOT_PUBLIC = [ipaddress.ip_network(n) for n in ("192.0.0.0/24", "64:ff9b:1::/48")]


def is_public(address: str) -> bool:
    """Whether a packet to ``address`` stays on the public internet: a global unicast address that
    embeds no address of a private, loopback, link-local or reserved network."""
    ip = ipaddress.ip_address(address.split("%")[0])
    if any(ip in net for net in _NOT_PUBLIC):
        return False
    if isinstance(ip, ipaddress.IPv6Address) and (inner := _embedded_ipv4(ip)) is not None:
        return is_public(str(inner))
    return ip.is_global and not ip.is_multicast


class SourcePolicy:
    """Which URLs a server reads: public http(s)/rtsp/rtmp addresses, or (``allow_private``, for
    a trusted network) any address. FFmpeg is given the address that was checked (the name is
    resolved once, here; http keeps the name in its Host header, https in its TLS name), so a
    name that resolves elsewhere a moment later reaches nothing new, and it follows no redirect
    (a redirect would lead to an address nobody checked)."""

    def __init__(self, allow_private: bool = False):
        self.allow_private = allow_private

    def check(self, url) -> Location:
        """Where FFmpeg may read ``url``, else :class:`SourceError` (for any URL that is refused or
        cannot be resolved, :data:`URL_ERROR`). Resolves the name (blocking: call it off the event
        loop)."""
        if not isinstance(url, str):
            raise SourceError("url must be text")
        try:
            parts = urllib.parse.urlsplit(url)
            host, port, scheme = parts.hostname, parts.port, parts.scheme.lower()
        except ValueError as e:  # a malformed authority ("[127.0.0.1]", a port out of range)
            raise SourceError(URL_ERROR) from e
        if scheme not in URL_SCHEMES or not host:
            raise SourceError(f"url must be a network stream ({', '.join(s + '://' for s in URL_SCHEMES)})")
        options = {**URL_OPTIONS, "max_redirects": "0"}
        if self.allow_private:
            return Location(url, options, url=True)
        try:
            address = socket.getaddrinfo(host, port)[0][4][0]
        except (OSError, UnicodeError, ValueError) as e:
            raise SourceError(URL_ERROR) from e
        if not is_public(address):
            raise SourceError(URL_ERROR)
        literal = f"[{address}]" if ":" in address else address
        netloc = f"{literal}:{port}" if port else literal
        if scheme in ("http", "https"):
            options["headers"] = f"Host: {parts.netloc.rpartition('@')[2]}\r\n"
            if scheme == "https":
                options["verifyhost"] = host
        return Location(parts._replace(netloc=netloc).geturl(), options, url=True)


def probe(location: Location, *, timeout: float = 10.0) -> tuple[int, int]:
    """Open the source and decode its first frame: ``(height, width)``, or :class:`SourceError`
    saying why not (for a URL, always :data:`URL_ERROR`)."""
    import av

    try:
        with av.open(location.where, options=dict(location.options), timeout=timeout) as container:
            if not container.streams.video:
                raise SourceError("no video stream")
            frame = next(container.decode(video=0))
    except (av.error.FFmpegError, OSError, StopIteration, SourceError) as e:
        raise SourceError(URL_ERROR if location.url else f"not a readable video ({type(e).__name__})") from e
    check_size(frame.height, frame.width)
    return frame.height, frame.width


def check_size(height: int, width: int) -> None:
    if max(height, width) > MAX_SIDE or height * width > MAX_PIXELS:
        raise SourceError(f"frames of {width}x{height} are larger than this server takes (at most {MAX_SIDE} "
                          f"pixels a side and {MAX_PIXELS} in all)")


def read_windows(location: Location, plan: WindowPlan, *, timeout: float = 10.0) -> Iterator[FrameWindow]:
    """The source's windows, under the same FFmpeg rules as :func:`probe` (frames that outgrow the
    limits mid-stream end it)."""
    for window in iter_windows(location.where, plan, timeout=timeout, ffmpeg_options=dict(location.options)):
        check_size(*window.frames.shape[1:3])
        yield window


FRAME_FORMATS = ("JPEG", "PNG")
FRAME_MODES = ("RGB", "RGBA", "L", "LA", "P")  # 8 bits a channel: what a browser's canvas encodes


def decode_frame(data: bytes) -> torch.Tensor:
    """A JPEG or PNG frame of 8-bit channels sent by a viewer, as uint8 ``[H, W, 3]``; its format
    and size are checked from the header, before anything is decoded."""
    try:
        image = Image.open(io.BytesIO(data), formats=FRAME_FORMATS)
        if image.mode not in FRAME_MODES:
            raise SourceError(f"a frame of mode {image.mode} (frames are JPEG or PNG of 8-bit RGB or grey)")
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
