import json
import math
import shutil
import subprocess
from fractions import Fraction

import numpy as np
import pytest
import torch

from livecc.data.synth import write_video
from livecc.data.video import FpsSampler, VideoError, available_backends, decode_clip
from livecc.qwen_vl import PixelBudget, clip_frame_size, smart_resize

CPU_BACKENDS = [b for b in ("decord", "pyav") if b in available_backends()]


def ffprobe_pts(ffprobe, path):
    out = subprocess.run([ffprobe, "-v", "error", "-select_streams", "v:0", "-show_entries", "frame=pts_time",
                          "-of", "json", str(path)], check=True, capture_output=True, text=True).stdout
    return np.array([float(f["pts_time"]) for f in json.loads(out)["frames"]])


def expected_strict_pts(all_pts, start, end, fps=2.0, max_frames=480):
    """Straight from the definition: first frame with pts >= t, for t in arange(start, end, 1/fps)."""
    chosen = []
    for t in np.arange(start, end, 1 / fps)[:max_frames]:
        later = all_pts[(all_pts >= t - 1e-6) & (all_pts <= end + 1e-6)]
        if len(later) == 0:
            break
        chosen.append(later.min())
    if len(chosen) % 2:
        chosen.append(chosen[-1])
    return np.array(chosen)


@pytest.mark.parametrize("name", ["bikes.mp4", "bigbuckbunny.mp4"])
@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("span", [(None, None), (1.3, 4.1), (0.0, 2.98)])
def test_clip_start_rule_pts_match_ffprobe(ffprobe, name, backend, span, real_clip):
    path = real_clip(name)
    all_pts = ffprobe_pts(ffprobe, path)
    clip = decode_clip(path, *span, backend=backend, resize=False, rule="clip-start")
    start = 0.0 if span[0] is None else span[0]
    end = all_pts[-1] if span[1] is None else span[1]
    expected = expected_strict_pts(all_pts, start, end + (1e-3 if span[1] is None else 0))
    np.testing.assert_allclose(clip.pts, expected, atol=1e-6)
    assert clip.frames.dtype == torch.uint8 and clip.frames.shape[0] == len(expected) and len(expected) % 2 == 0


@pytest.mark.skipif(len(CPU_BACKENDS) < 2, reason="needs two decoders to compare")
@pytest.mark.parametrize("name", ["bikes.mp4", "bigbuckbunny.mp4"])
def test_backends_return_the_same_frames(name, real_clip):
    path = real_clip(name)
    clips = [decode_clip(path, 0.7, 3.3, backend=b) for b in CPU_BACKENDS]
    for other in clips[1:]:
        np.testing.assert_allclose(other.pts, clips[0].pts, atol=1e-6)  # decord's pts are float32
        # Same decoder library underneath (FFmpeg); allow a rounding step of colour conversion.
        diff = (other.frames.int() - clips[0].frames.int()).abs().float()
        assert diff.mean() < 1.0, diff.mean()


def test_resize_follows_pixel_budget(real_clip):
    path = real_clip("bigbuckbunny.mp4")  # 1280x720
    clip = decode_clip(path, 0.0, 2.0)
    h, w = clip.frames.shape[1:3]
    assert (h, w) == clip_frame_size(720, 1280, 4) == (560, 1008)
    assert h % 28 == 0 and w % 28 == 0 and h * w <= 768 * 28 * 28


def test_smart_resize_edges():
    assert smart_resize(720, 1280, max_pixels=768 * 784) == (560, 1008)
    assert smart_resize(10, 10, min_pixels=100 * 784) == (280, 280)  # upscaled to the minimum
    h, w = smart_resize(1920, 1080, max_pixels=768 * 784)  # portrait
    assert h > w and h * w <= 768 * 784 and h % 28 == w % 28 == 0
    with pytest.raises(ValueError, match="aspect ratio"):
        smart_resize(10, 2500)
    budget = PixelBudget()
    # 400 frames share 24576*784 pixels per pair of frames; at 480 the 1.05x floor takes over.
    assert budget.frame_max_pixels(400) == pytest.approx(24576 * 784 / 400 * 2)
    assert budget.frame_max_pixels(480) == int(100 * 784 * 1.05)
    assert budget.frame_max_pixels(2) == 768 * 784
    assert budget.frame_max_pixels(100000) == int(100 * 784 * 1.05)


def test_sampler_duplicates_frames_of_a_slow_video():
    sampler = FpsSampler(0.0, 3.0, rule="clip-start")
    assert [sampler.take(p, p + 1) for p in (0.0, 1.0, 2.0, 3.0)] == [1, 2, 2, 1]  # 1 fps source, 2 fps targets
    assert sampler.done
    capped = FpsSampler(0.0, math.inf, max_frames=3, rule="clip-start")
    assert [capped.take(p, p) for p in np.arange(0, 3, 0.25)][:7] == [1, 0, 1, 0, 1, 0, 0]
    reference = FpsSampler(None, 3.0)  # end timestamps; targets from the first frame's (1.0)
    assert [reference.take(p, p + 1) for p in (0.0, 1.0, 2.0, 3.0)] == [1, 2, 2, 0]
    assert reference.done


def reference_selection(times, start, end, fps=2.0, max_frames=480):
    """Indices of the frames the reference implementation selects, step by step, over decord's end
    timestamps (float32), as it runs under its pinned NumPy 1.24: bounds compared with the float32
    times in float32, targets in float64. (Under NumPy 2 the same code builds its targets in float32
    and picks other frames.) One defect fixed: a target that no kept frame reaches (float rounding
    puts the last frame a hair before ``last + k / fps``) is dropped, where the reference's
    ``argmax`` over an all-False row gave it the clip's first frame."""
    video_start = start or times[0]  # `if not video_start`: None and 0 alike
    video_end = end or times[-1]
    clip_idxs = ((video_start <= times) & (times <= video_end)).nonzero()[0]
    clip_pts = times[clip_idxs].astype(np.float64)
    expected = np.arange(clip_pts[0], clip_pts[-1] + 1e-6, 1 / fps)[:max_frames]
    reached = expected[:, None] <= clip_pts
    chosen = clip_idxs[reached.argmax(axis=1)[reached.any(axis=1)]].tolist()
    while len(chosen) % 2:
        chosen.append(chosen[-1])
    return chosen


RATES = [10, Fraction(25, 2), 15, 20, 24, 25, 30, Fraction(30000, 1001)]
# (container, ffmpeg output options): mp4 at every rate; at 29.97 and 25 fps also files whose video
# starts after 0 (mpegts, an mp4 without an edit list, a Matroska file with a timestamp offset).
CONTAINERS = [("mp4", [])] + [(f"{ext}", options) for ext, options in (
    ("ts", []), ("noedit.mp4", ["-use_editlist", "0"]), ("mkv", ["-output_ts_offset", "3.3"]))]


def numbered_video(path, rate, seconds, options):
    """H.264 with B-frames and a GOP of 12 (several per clip); frame i is numbered in its pixels:
    the left half's grey level is 4 * (i % 64), the right half's 4 * (i // 64)."""
    n = math.ceil(seconds * rate)
    i = np.arange(n)[:, None, None, None]
    frames = np.concatenate([np.broadcast_to(4 * (i % 64), (n, 32, 32, 3)),
                             np.broadcast_to(4 * (i // 64), (n, 32, 32, 3))], axis=2).astype(np.uint8)
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", "64x32",
                    "-r", str(rate), "-i", "-", "-c:v", "libx264", "-qp", "0", "-bf", "2", "-g", "12",
                    "-pix_fmt", "yuv420p", *options, str(path)], input=frames.tobytes(), check=True)


def frame_numbers(frames: torch.Tensor) -> list[int]:
    levels = lambda half: (half.float().mean(dim=(1, 2, 3)) / 4).round().long()
    return (levels(frames[:, :, :32]) + 64 * levels(frames[:, :, 32:])).tolist()


@pytest.fixture(scope="module")
def oracle_videos(tmp_path_factory):
    if shutil.which("ffmpeg") is None:
        pytest.skip("ffmpeg not installed (make setup installs it)")
    root = tmp_path_factory.mktemp("oracle")
    videos = []
    for rate in RATES:
        for ext, options in CONTAINERS if rate in (25, Fraction(30000, 1001)) else CONTAINERS[:1]:
            path = root / f"{float(rate):.2f}.{ext}"
            numbered_video(path, rate, 12.0, options)
            videos.append(path)
    return videos


def test_every_backend_selects_the_reference_frames(oracle_videos):
    """The frame oracle: for clips at eight frame rates in four containers (three starting after 0),
    spans whose bounds land on the frames' 0.5 s grid (where float32 times tie with the targets)
    and random ones, every CPU backend returns the reference's frames (by the numbers in their
    pixels) at the reference's times."""
    decord = pytest.importorskip("decord")
    seed = int(np.random.SeedSequence().entropy % 2**32)
    rng = np.random.default_rng(seed)
    for path in oracle_videos:
        reader = decord.VideoReader(str(path))
        ends = reader.get_frame_timestamp(np.arange(len(reader)))[:, 1]
        assert frame_numbers(torch.from_numpy(reader.get_batch(list(range(len(reader)))).asnumpy())) \
            == list(range(len(reader))), path  # decord's order is the encoded order
        starts = rng.uniform(0, 6, 8)
        spans = [(None, None), (0.0, None), (None, 5.0), (1.2, 4.7), (0.5, 6.0), (2.0, None), (0.1, 3.1)] + [
            (round(float(a), int(r)), round(float(a + b), int(r)))
            for a, b, r in zip(starts, rng.uniform(1, 5.5, 8), rng.integers(1, 17, 8))]
        for span in spans:
            expected = reference_selection(ends, *span)
            for backend in CPU_BACKENDS:
                clip = decode_clip(path, *span, backend=backend, resize=False)
                where = f"{path.name} {span} {backend} (seed {seed})"
                assert frame_numbers(clip.frames) == expected, where
                assert clip.pts == ends[expected].astype(np.float64).tolist(), where


def test_the_two_rules_part_by_a_frame(tmp_path):
    """At 29.97 fps from 1.2 s: the reference takes, per target, the first frame *ending* at or
    after it, from the first kept frame's end (frames 35, 50); the clip-start rule the first frame
    *starting* at or after ``1.2 + k / 2`` (frames 36, 51)."""
    av = pytest.importorskip("av")
    path = tmp_path / "numbered.mp4"
    with av.open(str(path), "w") as container:  # frame i is a flat grey of level 4 * i
        stream = container.add_stream("libx264", rate=Fraction(30000, 1001))
        stream.height, stream.width, stream.pix_fmt = 32, 32, "yuv420p"
        stream.options = {"preset": "ultrafast", "crf": "0"}
        for i in range(64):
            image = np.full((32, 32, 3), 4 * i, dtype=np.uint8)
            container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        container.mux(stream.encode())
    index = lambda clip: [round(float(f.float().mean()) / 4) for f in clip.frames]
    reference = index(decode_clip(path, 1.2, 2.05, resize=False))
    clip_start = index(decode_clip(path, 1.2, 2.05, resize=False, rule="clip-start"))
    assert reference == [35, 50] and clip_start == [36, 51]


def test_missing_corrupt_and_streamless_files_name_the_path(tmp_path, real_clip):
    with pytest.raises(VideoError, match="missing.mp4: video file not found"):
        decode_clip(tmp_path / "missing.mp4")
    corrupt = tmp_path / "corrupt.mp4"
    corrupt.write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 20)
    for backend in CPU_BACKENDS:
        with pytest.raises(VideoError, match="corrupt.mp4"):
            decode_clip(corrupt, backend=backend)
    with pytest.raises(VideoError, match="empty clip"):
        decode_clip(real_clip("bikes.mp4"), 3.0, 3.0)
    with pytest.raises(VideoError, match="no frames"):
        decode_clip(real_clip("bikes.mp4"), 50.0, 60.0, backend="pyav")
    with pytest.raises(VideoError, match="not finite"):
        decode_clip(real_clip("bikes.mp4"), float("nan"), 2.0)


def test_audio_only_file_has_no_video_stream(tmp_path):
    av = pytest.importorskip("av")
    path = tmp_path / "tone.m4a"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("aac", rate=16000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), dtype=np.float32), format="fltp", layout="mono")
        frame.sample_rate = 16000
        for i in range(5):
            frame.pts = i * 1024
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    with pytest.raises(VideoError, match="tone.m4a: no video stream"):
        decode_clip(path, backend="pyav")


def test_a_file_nvdec_cannot_take_is_decoded_on_the_cpu(tmp_path, monkeypatch):
    from livecc.data import video

    def refuses(path, start, device):
        raise VideoError(f"{path}: cannot decode video on NVDEC (unsupported codec)")
        yield  # a generator, as every backend

    path = tmp_path / "clip.mp4"
    write_video(path, [], 3.0, 10, (64, 64))
    monkeypatch.setitem(video.BACKENDS, "nvdec", refuses)
    name, stream = video._open("nvdec", str(path), 0.0, "cpu", auto=True)
    assert name in ("decord", "pyav") and len(list(stream)) == 30
    with pytest.raises(VideoError, match="unsupported codec"):  # asked for by name: no fallback
        list(video._open("nvdec", str(path), 0.0, "cpu", auto=False)[1])


def test_what_pynvvideocodec_raises_is_a_video_error_and_falls_back(tmp_path, monkeypatch):
    """PyNvVideoCodec's decoder raises a bare ``Exception`` for a file it cannot take (one that
    reports 0 frames, say): that is the file's error, and an automatic choice decodes on the CPU."""
    import sys
    import types

    from livecc.data import video

    class SimpleDecoder:
        def __init__(self, path, **kwargs):
            raise Exception("Failed to create decoder: the stream reports 0 frames")

    fake = types.SimpleNamespace(SimpleDecoder=SimpleDecoder, OutputColorType=types.SimpleNamespace(RGB=0))
    monkeypatch.setitem(sys.modules, "PyNvVideoCodec", fake)
    path = tmp_path / "clip.mp4"
    write_video(path, [], 3.0, 10, (64, 64))
    with pytest.raises(VideoError, match=r"clip.mp4: cannot decode video on NVDEC \(Exception: .*0 frames"):
        list(video._open("nvdec", str(path), 0.0, "cpu", auto=False)[1])
    name, stream = video._open("nvdec", str(path), 0.0, "cpu", auto=True)
    assert name in ("decord", "pyav") and len(list(stream)) == 30
