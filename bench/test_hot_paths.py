"""pytest-benchmark micro-benchmarks of CPU hot paths (not part of the test suite):

    python -m pytest bench/test_hot_paths.py --benchmark-only
"""

import pytest
import torch

from livecc.data.packing import pack_samples
from livecc.data.records import ClipRecord
from livecc.data.sequence import build_streaming_sample
from livecc.data.video import VideoClip
from livecc.data.words import Word, parse_vtt


@pytest.fixture(scope="module")
def processor():
    from livecc.qwen_vl import offline_processor

    return offline_processor()


def youtube_vtt(minutes: int) -> str:
    """A YouTube auto-caption file: cues of inline-timed words under the rolling repeat of the
    previous cue's line."""
    cues = ["WEBVTT\n"]
    previous = " "
    for i in range(minutes * 20):  # one 3 s cue of 8 words every 3 s
        t = i * 3.0
        stamp = lambda s: f"{int(s // 3600):02d}:{int(s % 3600 // 60):02d}:{int(s % 60):02d}.{round(s % 1 * 1000):03d}"
        words = "".join(f"<{stamp(t + 0.3 * k)}><c> word{k}</c>" for k in range(1, 8))
        cues.append(f"{stamp(t)} --> {stamp(t + 3.0)} align:start position:0%\n{previous}\nword0{words}\n")
        previous = " ".join(f"word{k}" for k in range(8))
    return "\n".join(cues)


def test_parse_one_hour_of_youtube_vtt(benchmark):
    text = youtube_vtt(60)
    words = benchmark(parse_vtt, text)
    assert len(words) == 60 * 20 * 8


@pytest.fixture(scope="module")
def long_clip():
    """A 240 s clip (480 frames, the maximum) at the smallest frame size."""
    frames = torch.randint(0, 256, (480, 280, 280, 3), dtype=torch.uint8)
    words = [Word(0.3 + 0.4 * k, 0.5 + 0.4 * k, f"w{k}") for k in range(590)]
    clip = VideoClip(frames, [k / 2 for k in range(480)], "clip.mp4", "bench")
    return clip, ClipRecord("clip.mp4", 0.0, 240.0, words)


def test_build_240s_streaming_sample(benchmark, processor, long_clip):
    clip, record = long_clip
    sample = benchmark.pedantic(build_streaming_sample, args=(record, processor), kwargs={"clip": clip}, rounds=3)
    assert len(sample.windows) > 230


def test_pack_two_clips(benchmark, processor, long_clip):
    clip, record = long_clip
    sample = build_streaming_sample(record, processor, clip=clip)
    pack = benchmark(pack_samples, [sample] * 2)
    assert pack.n_clips == 2
