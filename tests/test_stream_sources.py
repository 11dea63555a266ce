import json
import shutil
import subprocess
import time

import pytest
import torch

from livecc.cli import main
from livecc.data.synth import synthesize_clip
from livecc.infer import StreamingSession
from livecc.infer.stream import iter_windows, run_stream
from livecc.models import tiny_qwen_vl


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    root = tmp_path_factory.mktemp("clips")
    synthesize_clip(root, "shapes", seed=3, duration=6.0)
    return root / "shapes.mp4"


def test_windows_of_a_file(clip):
    windows = list(iter_windows(str(clip)))
    assert [w.frames.shape[0] for w in windows] == [6] + [2] * 3  # 12 frames at 2 FPS over 6 s
    assert [(w.index, w.start, w.end) for w in windows] == [(0, 0.0, 3.0), (1, 3.0, 4.0), (2, 4.0, 5.0),
                                                            (3, 5.0, 6.0)]


def test_live_stream_from_ffmpeg_pipe_is_commented_while_it_plays(clip, processor):
    ffmpeg = shutil.which("ffmpeg")
    if ffmpeg is None:
        pytest.skip("ffmpeg not installed (make setup installs it)")
    proc = subprocess.Popen([ffmpeg, "-loglevel", "error", "-re", "-i", str(clip), "-c:v", "libx264",
                             "-preset", "ultrafast", "-tune", "zerolatency", "-muxdelay", "0", "-flush_packets", "1",
                             "-f", "mpegts", "pipe:1"], stdout=subprocess.PIPE)
    session = StreamingSession(tiny_qwen_vl(seed=0), processor, max_new_tokens=2)
    arrivals = []
    start = time.monotonic()
    try:
        # (a lag bound no busy machine reaches: this is about when windows arrive, not about dropping)
        report = run_stream(session, iter_windows(proc.stdout, format="mpegts"), realtime=True, max_lag=60.0,
                            on_result=lambda r: arrivals.append((r.end, time.monotonic() - start)))
    finally:
        proc.wait(timeout=30)
    assert report.windows == 4 and report.dropped == 0
    # Windows are commented as the stream plays (-re: FFmpeg sends at real-time pace), not at the end:
    # the first comment (its window ends at 3 s) comes well before the last (6 s), which cannot come
    # before the stream has played.
    assert [end for end, _ in arrivals] == [3.0, 4.0, 5.0, 6.0]
    assert arrivals[-1][1] - arrivals[0][1] > 1.5 and arrivals[-1][1] > 5.0, arrivals


def test_falling_behind_drops_windows_and_says_so(clip, processor):
    class SlowSession(StreamingSession):
        def step(self, frames, force_text=None):
            time.sleep(1.6)  # slower than real time: 1 s windows take 1.6 s
            return super().step(frames, force_text)

    session = SlowSession(tiny_qwen_vl(seed=0), processor, max_new_tokens=1, trace=True)
    said = []
    report = run_stream(session, iter_windows(str(clip)), realtime=True, max_lag=0.5, on_result=said.append)
    assert report.dropped >= 1 and report.windows + report.dropped == 4
    # A dropped window is a gap: each window commented keeps its own times, and Time= says them.
    text = processor.tokenizer.decode(torch.cat(session.trace.ids))
    ends = [r.end for r in said]
    assert ends == sorted(ends) and set(ends) < {3.0, 4.0, 5.0, 6.0}
    assert all(r.end - r.start == (3.0 if r.start == 0 else 1.0) for r in said)
    assert all(f"Time={r.start:.1f}-{r.end:.1f}s" in text for r in said)


def test_cli_stream_writes_commentary_and_summary(clip, tmp_path, capsys):
    out = tmp_path / "commentary.jsonl"
    assert main(["stream", str(clip), "--model", "tiny", "--fast", "--max-new-tokens", "2",
                 "--jsonl", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "[    0.0-    3.0s]" in printed and "summary: windows=4 dropped=0" in printed
    summary = dict(kv.split("=") for kv in printed.split("summary: ")[1].split())
    assert float(summary["tokens_per_s"]) > 0 and float(summary["p99_ms"]) >= float(summary["p50_ms"]) > 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 4 and all(r["tokens_per_s"] > 0 and r["timings_ms"]["total"] > 0 for r in rows)


def test_missing_stream_is_a_clear_error(tmp_path, capsys):
    assert main(["stream", str(tmp_path / "nope.mp4"), "--model", "tiny", "--fast"]) == 1
    assert "nope.mp4" in capsys.readouterr().err
