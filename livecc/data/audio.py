"""A video's audio for speech recognition: 16 kHz mono, on the video's own clock, cut at silences.

The audio is decoded by FFmpeg (PyAV) and resampled to the recognisers' 16 kHz mono. Its first
sample's time is counted as livecc counts frame times: from the video stream's start (an mpegts
file or an mp4 without an edit list starts after 0; an edit list is applied by the demuxer), so a
word heard at ``t`` in the audio is said at ``offset + t`` in the video's frames. Long audio is cut
into chunks of at most ``chunk_s`` seconds at the quietest 20 ms near each cut, never inside a word
if a pause is near.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["RATE", "Audio", "AudioError", "cut_at_silences", "read_audio"]

RATE = 16000
MAX_SECONDS = 4 * 3600  # of audio in one file (230 MB as 16-bit samples)
FRAME = RATE // 50  # 20 ms, the unit silences are looked for in
SILENT_RMS = 1e-4  # below this (in [-1, 1] units) a whole file is silence


class AudioError(RuntimeError):
    """A video whose audio cannot be read; the message names the file."""


@dataclass
class Audio:
    samples: np.ndarray  # float32 [n] in [-1, 1] at RATE
    offset: float  # seconds on the video's clock of the first sample

    @property
    def seconds(self) -> float:
        return len(self.samples) / RATE

    @property
    def silent(self) -> bool:
        return not len(self.samples) or float(np.sqrt(np.mean(self.samples.astype(np.float64) ** 2))) < SILENT_RMS


def read_audio(path: str | Path) -> Audio:
    """The audio of the video at ``path`` as 16 kHz mono, and where it starts on the video's clock."""
    import av

    source = str(path)
    if not Path(source).is_file():
        raise AudioError(f"{source}: video file not found")
    try:
        with av.open(source) as container:
            if not container.streams.audio:
                raise AudioError(f"{source}: no audio stream")
            stream = container.streams.audio[0]
            video = container.streams.video[0] if container.streams.video else None
            video_start = float(video.start_time * video.time_base) if video and video.start_time is not None else 0.0
            resampler = av.AudioResampler(format="s16", layout="mono", rate=RATE)
            pieces, first, total = [], None, 0
            for frame in container.decode(stream):
                if first is None and frame.pts is not None:
                    first = float(frame.pts * frame.time_base)
                for out in resampler.resample(frame):
                    pieces.append(out.to_ndarray().reshape(-1))
                    total += pieces[-1].size
                if total > MAX_SECONDS * RATE:
                    raise AudioError(f"{source}: more than {MAX_SECONDS // 3600} hours of audio")
            pieces += [out.to_ndarray().reshape(-1) for out in resampler.resample(None)]
    except av.error.FFmpegError as e:
        raise AudioError(f"{source}: cannot read its audio ({e})") from e
    samples = np.concatenate(pieces).astype(np.float32) / 32768.0 if pieces else np.zeros(0, np.float32)
    return Audio(samples, (first or 0.0) - video_start)


def cut_at_silences(samples: np.ndarray, chunk_s: float = 30.0, search_s: float = 5.0) -> list[tuple[int, int]]:
    """``[(begin, end)]`` sample ranges covering ``samples``, each at most ``chunk_s`` long, each cut
    at the quietest 20 ms of the last ``search_s`` seconds before the limit."""
    limit, search = int(chunk_s * RATE), int(search_s * RATE)
    cuts, begin = [], 0
    while len(samples) - begin > limit:
        lo, hi = begin + max(FRAME, limit - search), begin + limit
        frames = samples[lo:hi][: (hi - lo) // FRAME * FRAME].reshape(-1, FRAME)
        quietest = lo + int(np.argmin((frames.astype(np.float64) ** 2).mean(1))) * FRAME + FRAME // 2
        cuts.append((begin, quietest))
        begin = quietest
    return cuts + [(begin, len(samples))]
