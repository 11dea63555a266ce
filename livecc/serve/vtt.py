"""Commentary as WebVTT subtitles, so any player can show it over the video."""

from __future__ import annotations

from pathlib import Path
from typing import TextIO

__all__ = ["VttWriter", "vtt_text"]


def _clock(seconds: float) -> str:
    ms = max(0, round(seconds * 1000))
    h, ms = divmod(ms, 3_600_000)
    m, ms = divmod(ms, 60_000)
    s, ms = divmod(ms, 1000)
    return f"{h:02d}:{m:02d}:{s:02d}.{ms:03d}"


def _cue(start: float, end: float, text: str) -> str:
    # A cue's text may not hold a blank line or "-->"; commentary never needs either.
    text = " ".join(text.replace("-->", "->").split())
    return f"{_clock(start)} --> {_clock(end)}\n{text}\n\n"


def vtt_text(cues: list[tuple[float, float, str]]) -> str:
    """A WebVTT file of ``(start, end, text)`` cues; windows that said nothing are left out."""
    return "WEBVTT\n\n" + "".join(_cue(*c) for c in cues if c[2].strip())


class VttWriter:
    """Append cues to a WebVTT file as windows finish (flushed, so a player can follow it live)."""

    def __init__(self, path: str | Path):
        self.file: TextIO = open(path, "w")
        self.file.write("WEBVTT\n\n")

    def write(self, start: float, end: float, text: str) -> None:
        if text.strip():
            self.file.write(_cue(start, end, text))
            self.file.flush()

    def close(self) -> None:
        self.file.close()
