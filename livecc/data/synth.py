"""Synthetic commentated clips: real H.264 files with word-timed commentary in the Live-CC format.

Coloured shapes enter at the left, cross the frame and leave at the right; the commentary names
each event ("red circle enters", "red circle leaves") as it happens, and is silent otherwise. The
words can only be predicted from the pixels, which makes these clips a test of the whole path.
Each colour has its own shape (a red circle, a green square, ...): a model this small, trained for
minutes on a CPU, reliably tells colours apart long before it tells outlines apart.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np

from .records import ClipRecord
from .words import Word

__all__ = ["COLORS", "SHAPES", "ShapeEvent", "background", "event_words", "random_events", "render_frame", "speak",
           "synthesize_clip"]

COLORS = {"red": (220, 40, 40), "green": (40, 190, 60), "blue": (40, 80, 230), "yellow": (235, 215, 40)}
SHAPES = {"red": "circle", "green": "square", "blue": "triangle", "yellow": "diamond"}  # by colour
WORD_GAP = 0.25  # seconds between commentary words; a 3-word phrase ends 0.8 s after its event
FIRST_WINDOW = 3.0  # the first streaming window; events start after it


@dataclass(frozen=True)
class ShapeEvent:
    enter: float
    leave: float
    color: str
    shape: str
    lane: float  # vertical position, 0..1


def random_events(rng: np.random.Generator, duration: float, n: int) -> list[ShapeEvent]:
    """Up to ``n`` shapes, each on screen for 2-4 s. Entries and exits happen at distinct ``k + 0.55``
    seconds after the first window: at 2 FPS the phrase (ending 0.8 s later) then falls entirely in
    the window whose frames are ``k + 1`` and ``k + 1.5``, the first frames that show the event."""
    seconds = np.arange(FIRST_WINDOW, duration - 2)
    for count in range(min(n, len(seconds) // 2), 0, -1):
        for _ in range(200):  # rejection sampling: cheap at these sizes
            enters = rng.choice(seconds, count, replace=False)
            leaves = enters + rng.integers(2, 5, count)
            times = np.concatenate([enters, leaves])
            if leaves.max() <= seconds[-1] and len(set(times.tolist())) == 2 * count:
                order = np.argsort(enters)
                colors = [str(c) for c in rng.choice(list(COLORS), count)]
                return [ShapeEvent(float(enters[i]) + 0.55, float(leaves[i]) + 0.55, colors[k], SHAPES[colors[k]],
                                   float((k % 3 + 0.5) / 3))
                        for k, i in enumerate(order)]
    return []


def event_words(events: list[ShapeEvent]) -> list[Word]:
    """Commentary: three words starting 0.1 s after each entry and each exit, sorted by time."""
    words = []
    for e in events:
        for t, verb in ((e.enter, "enters"), (e.leave, "leaves")):
            for k, text in enumerate((e.color, e.shape, verb)):
                start = t + 0.1 + k * WORD_GAP
                words.append(Word(round(start, 3), round(start + 0.2, 3), text))
    return sorted(words)


def background(size: tuple[int, int] = (224, 224)) -> np.ndarray:
    """Grey field with a dark gate along the left edge and a light one along the right (an eighth of
    the width each). A shape over a gate is entering or leaving: a local pattern a ViT sees at once,
    where a bare edge would have to be told from the middle by absolute position."""
    h, w = size
    frame = np.full((h, w, 3), 90, dtype=np.uint8)
    frame[:, : w // 8] = 50
    frame[:, w - w // 8 :] = 140
    return frame


def render_frame(events: list[ShapeEvent], t: float, size: tuple[int, int] = (224, 224)) -> np.ndarray:
    """uint8 ``[H, W, 3]``: a shape waits 1 s on the left gate as it enters, crosses the middle, and
    waits 1 s on the right gate as it leaves (so each event shows in its window)."""
    h, w = size
    frame = background(size)
    yy, xx = np.mgrid[0:h, 0:w]
    r = min(h, w) // 6
    for e in events:
        if e.enter <= t < e.enter + 1:
            cx = r
        elif e.enter + 1 <= t < e.leave:
            cx = int(w * (0.3 + 0.4 * (t - e.enter - 1) / max(e.leave - e.enter - 1, 1e-6)))
        elif e.leave <= t < e.leave + 1:
            cx = w - r - 1
        else:
            continue
        cy = int(e.lane * h)
        if e.shape == "circle":
            mask = (xx - cx) ** 2 + (yy - cy) ** 2 <= r * r
        elif e.shape == "square":
            mask = (abs(xx - cx) <= r * 0.8) & (abs(yy - cy) <= r * 0.8)
        elif e.shape == "diamond":
            mask = abs(xx - cx) + abs(yy - cy) <= r
        else:
            mask = (yy - cy <= r * 0.8) & (yy - cy >= -r) & (abs(xx - cx) <= (yy - cy + r) * 0.6)
        frame[mask] = COLORS[e.color]
    return frame


def write_video(path: str | Path, events: list[ShapeEvent], duration: float, fps: int | Fraction = 10,
                size: tuple[int, int] = (224, 224)) -> None:
    """Encode the scene as H.264 (yuv420p) with PyAV (``fps`` may be a fraction, e.g. 30000/1001)."""
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.height, stream.width = size
        stream.pix_fmt = "yuv420p"
        stream.options = {"preset": "ultrafast", "crf": "18"}
        for i in range(int(round(duration * fps))):
            frame = av.VideoFrame.from_ndarray(render_frame(events, i / fps, size), format="rgb24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode())


def synthesize_clip(root: str | Path, name: str, seed: int, duration: float = 12.0, n_events: int = 4,
                    fps: int = 10, size: tuple[int, int] = (224, 224)) -> ClipRecord:
    """Write ``root/name.mp4`` and return its record (video path relative to ``root``)."""
    rng = np.random.default_rng(seed)
    events = random_events(rng, duration, n_events)
    Path(root).mkdir(parents=True, exist_ok=True)
    write_video(Path(root) / f"{name}.mp4", events, duration, fps, size)
    words = [w for w in event_words(events) if w.end <= duration]
    return ClipRecord(video=f"{name}.mp4", video_start=0.0, video_end=duration, words=words,
                      title="shapes on a grey field", meta={"category": "synthetic"})


def speak(text: str, rate: int = 16000) -> np.ndarray:
    """``text`` said by espeak-ng (an American voice, 150 words a minute) as float32 mono samples in
    [-1, 1] at ``rate``: speech of known words for the speech-recognition stage's tests."""
    import io
    import subprocess
    import wave

    out = subprocess.run(["espeak-ng", "-v", "en-us", "-s", "150", "--stdout", text], capture_output=True,
                         check=True).stdout
    with wave.open(io.BytesIO(out)) as w:
        native, pcm = w.getframerate(), np.frombuffer(w.readframes(w.getnframes()), dtype=np.int16)
    t = np.arange(int(len(pcm) * rate / native)) * native / rate
    return (np.interp(t, np.arange(len(pcm)), pcm.astype(np.float32)) / 32768).astype(np.float32)
