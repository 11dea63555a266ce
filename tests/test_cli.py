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


def test_demo_builds_a_sample_from_a_synthesized_clip(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path), "--duration", "8"]) == 0
    out = capsys.readouterr().out
    assert (tmp_path / "clip0.mp4").stat().st_size > 0
    assert "Time=0.0-3.0s<|vision_start|><|video_pad|>x" in out and "labelled=" in out
    assert main(["sample", str(tmp_path / "records_with_seeks.jsonl"), "--video-root", str(tmp_path)]) == 0
    assert "windows=" in capsys.readouterr().out


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
