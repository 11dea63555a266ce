import json
import subprocess
import sys

from livecc.cli import build_parser, main


def test_help_lists_subcommands():
    text = build_parser().format_help()
    for command in ("demo", "sample", "words"):
        assert command in text
    out = subprocess.run([sys.executable, "-m", "livecc.cli", "--help"], capture_output=True, text=True, check=True)
    assert "demo" in out.stdout


def test_sample_prints_the_streaming_sequence_of_a_record(tmp_path, capsys):
    from livecc.data.records import RecordWriter
    from livecc.data.synth import synthesize_clip

    with RecordWriter(tmp_path / "records.jsonl") as writer:
        writer.write(synthesize_clip(tmp_path, "clip0", seed=1, duration=8.0))
    assert main(["sample", str(tmp_path / "records.jsonl"), "--video-root", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "Time=0.0-3.0s<|vision_start|><|video_pad|>x" in out and "windows=" in out and "labelled=" in out
    assert main(["sample", str(tmp_path / "records.jsonl"), "--video-root", str(tmp_path), "--arch", "qwen3_vl"]) == 0
    out = capsys.readouterr().out
    assert "Time=0.0-3.0s<0.2 seconds><|vision_start|><|video_pad|>x" in out and "<2.2 seconds>" in out


def test_words_prints_a_text_stream(tmp_path, capsys):
    srt = tmp_path / "a.srt"
    srt.write_text("1\n00:00:01,000 --> 00:00:02,000\nHello world\n")
    assert main(["words", str(srt)]) == 0
    assert json.loads(capsys.readouterr().out) == [[1.0, 1.5, "Hello"], [1.5, 2.0, "world"]]


def test_bad_input_is_a_clear_error_not_a_traceback(tmp_path, capsys):
    assert main(["sample", str(tmp_path / "missing.jsonl")]) == 1
    assert "missing.jsonl" in capsys.readouterr().err
    bad = tmp_path / "bad.vtt"
    bad.write_text("WEBVTT\n\n00:00:02.000 --> 00:00:01.000\nbackwards\n")
    assert main(["words", str(bad)]) == 1
    assert "bad.vtt" in capsys.readouterr().err
