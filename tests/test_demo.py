import json
from pathlib import Path

import pytest

from livecc.cli import main
from livecc.data.records import ClipRecord, read_records
from livecc.data.words import Word
from livecc.demo import DemoConfig, run_demo, word_f1


def test_word_f1_matches_words_within_the_tolerance():
    truth = [Word(1.0, 1.2, "red"), Word(1.3, 1.5, "circle"), Word(5.0, 5.2, "red")]
    said = [Word(2.0, 2.0, "red"), Word(2.0, 2.0, "circle"), Word(2.0, 2.0, "red"), Word(9.0, 9.0, "blue")]
    score = word_f1(said, truth)
    # "red" at 2.0 matches the red at 1.2 (0.8 s); the second "red" is 3.2 s from the other one.
    assert (score["precision"], score["recall"]) == (0.5, 2 / 3)
    assert word_f1([], truth)["f1"] == 0.0


@pytest.mark.slow
def test_shortened_demo_learns_from_the_pixels(tmp_path, capsys):
    # About 3 minutes on one core: fewer held-out clips and steps than the demo, no real-time wait.
    result = run_demo(DemoConfig(out=str(tmp_path), train_clips=96, test_clips=4, steps=250, realtime=False))
    scores = result["scores"]
    trained, untrained, blank = scores["trained"], scores["untrained"], scores["trained, blank frames"]
    assert trained["f1"] > untrained["f1"] + 0.2
    assert trained["f1"] > blank["f1"]  # with the frames blanked it falls back to its prior
    printed = capsys.readouterr().out
    assert "| trained |" in printed and "timings:" in printed
    # The printed command streams a held-out clip as the demo did: the checkpoint carries the
    # window plan and pixel budget it was trained with, so the same words come out.
    command = next(line.split()[1:] for line in printed.splitlines() if line.strip().startswith("livecc stream"))
    clip = command[1]
    demo_said = printed.split(f"{Path(clip).name}: truth = ")[1].split("\n", 1)[1].split(".mp4: truth")[0]
    demo_texts = [line.split("] ", 1)[1] for line in demo_said.splitlines() if line.strip().startswith("[")]
    out = tmp_path / "said.jsonl"
    assert main([*command, "--fast", "--jsonl", str(out)]) == 0
    said = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["text"] for r in said if r["text"]] == demo_texts and demo_texts
    records = (ClipRecord.from_messages(raw, "test.jsonl") for raw in read_records(tmp_path / "test.jsonl"))
    record = next(r for r in records if r.video == Path(clip).name)
    words = [Word(r["end"] - 0.5, r["end"] - 0.5, w) for r in said for w in r["text"].split()]
    score = word_f1(words, record.words)
    print(f"livecc stream on {Path(clip).name}: F1 {score['f1']:.3f} against the truth")
    assert score["f1"] > 0


@pytest.mark.slow
def test_a_tiny_qwen3vl_learns_the_demo_task(tmp_path):
    # About 3 minutes on one core: fewer held-out clips and steps than the demo, no real-time wait.
    result = run_demo(DemoConfig(out=str(tmp_path), arch="qwen3_vl", test_clips=4, steps=200, realtime=False))
    scores = result["scores"]
    trained, untrained, blank = scores["trained"], scores["untrained"], scores["trained, blank frames"]
    assert trained["f1"] > untrained["f1"] + 0.3
    assert trained["f1"] > blank["f1"] + 0.1  # the frames carry what it says
