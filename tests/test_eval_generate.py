import json

import pytest
import torch

from livecc.cli import main
from livecc.data.synth import synthesize_clip
from livecc.eval import Event, commentary_prompt, load_questions, normalize_question, score_mcq
from livecc.eval.mcq import answer_logits
from livecc.models import tiny_qwen_vl


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("livesports")
    for i in range(2):
        synthesize_clip(root / "videos", f"game{i}", seed=i, duration=8.0)
    events = [
        {"video": "game0.mp4", "video_id": "game0", "event_id": 1, "begin": 0.0, "end": 5.0,
         "event_title": "Shapes Cup final", "event_asr": "", "event_asr_text": "red circle enters", "class": "shapes"},
        {"video": "game1.mp4", "video_id": "game1", "event_id": 2, "begin": 2.0, "end": 8.0, "event_title": "",
         "event_asr": "and here they come", "event_asr_text": "blue square leaves", "class": "shapes"},
        {"video": "missing.mp4", "video_id": "gone", "event_id": 3, "begin": 0.0, "end": 4.0},
    ]
    annotations = root / "cc.jsonl"
    annotations.write_text("".join(json.dumps(e) + "\n" for e in events))
    return root, annotations


def test_reference_prompts():
    event = Event("v.mp4", "v", 1, 0.0, 1.0, title="Final", previous="He shoots.")
    instruct = commentary_prompt(event)
    assert instruct.startswith("You are an expert video commentator providing real-time, insightful, and engaging")
    assert 'This is a video titled "Final".\nHere is previous commentary of the video:\n\nHe shoots.\n\n' in instruct
    assert instruct.endswith("Please continue to comment the video.")
    assert commentary_prompt(event, "base") == "He shoots."


def test_cc_generate_end_to_end_resumes_and_reports_missing_video(dataset, capsys):
    root, annotations = dataset
    out = root / "preds.jsonl"
    args = ["eval", "cc-generate", "--annotations", str(annotations), "--video-root", str(root / "videos"),
            "--model", "tiny", "--out", str(out)]
    assert main(args) == 3  # one event failed: reported, and the exit status says so
    printed = capsys.readouterr().out
    assert "generated=2" in printed and "failed=1" in printed
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(r["video_id"], r["event_id"], r["begin"], r["end"]) for r in rows] == [
        ("game0", 1, 0.0, 5.0), ("game1", 2, 2.0, 8.0)]
    assert all(r["pred"].endswith("...") and " ..." not in r["pred"][:-3] for r in rows)
    failed = out.with_suffix(".failed.jsonl").read_text()
    assert "gone_3" in failed and "missing.mp4" in failed
    main(args)  # a rerun generates nothing new
    assert "skipped=2" in capsys.readouterr().out and len(out.read_text().splitlines()) == 2


def test_cc_generate_refuses_to_mix_runs_of_other_settings(dataset, capsys):
    """A rerun into the same --out with another style (or model) is refused, naming what differs,
    instead of skipping the events done and mixing two runs' predictions; --overwrite starts afresh."""
    root, annotations = dataset
    out = root / "mixed.jsonl"
    args = ["eval", "cc-generate", "--annotations", str(annotations), "--video-root", str(root / "videos"),
            "--model", "tiny", "--out", str(out), "--allow-failures"]
    assert main(args) == 0
    before = out.read_text()
    assert main([*args, "--style", "base"]) == 1
    assert "made with other settings (style differ)" in capsys.readouterr().err and out.read_text() == before
    assert main([*args, "--style", "base", "--overwrite"]) == 0
    assert "generated=2" in capsys.readouterr().out


def test_question_formats_normalize():
    videomme = normalize_question({"videoID": "abc", "question": "Q?", "options": ["A. red", "B. blue"],
                                   "answer": "B", "task_type": "Counting"})
    assert (videomme.video, videomme.options, videomme.answer, videomme.qtype) == ("abc.mp4", ["red", "blue"], "B",
                                                                                   "Counting")
    mvbench = normalize_question({"video": "x.mp4", "question": "Q?", "candidates": ["up", "down"], "answer": "down"},
                                 qtype="action_sequence")
    assert (mvbench.answer, mvbench.qtype) == ("B", "action_sequence")
    ovo = normalize_question({"video": "y.mp4", "question": "Q?", "options": ["a", "b", "c"], "gt": 2, "task": "OCR"})
    assert (ovo.answer, ovo.qtype) == ("C", "OCR")
    with pytest.raises(ValueError, match="neither a letter"):
        normalize_question({"video": "y.mp4", "question": "Q?", "options": ["a"], "answer": "zzz"})


def test_mcq_picks_the_highest_letter_logit_and_reports_per_type(dataset, processor, tmp_path):
    root, _ = dataset
    questions = [
        {"video": "game0.mp4", "begin": 0.0, "end": 4.0, "question": "Which shape enters first?",
         "options": ["circle", "square", "triangle"], "answer": "A", "question_type": "shape"},
        {"video": "game1.mp4", "question": "What color?", "options": ["red", "green", "blue", "yellow"],
         "answer": "C", "question_type": "color"},
        {"video": "game1.mp4", "question": "How many?", "options": ["1", "2"], "answer": "B",
         "question_type": "color"},
        {"video": "nope.mp4", "question": "?", "options": ["x", "y"], "answer": "A", "question_type": "shape"},
    ]
    path = tmp_path / "qa.jsonl"
    path.write_text("".join(json.dumps(q) + "\n" for q in questions))
    model = tiny_qwen_vl(seed=0)
    loaded = load_questions(path)
    result = score_mcq(model, processor, loaded, root / "videos", tmp_path / "pred.jsonl")
    rows = [json.loads(line) for line in (tmp_path / "pred.jsonl").read_text().splitlines()]
    assert result["answered"] == 3 and result["failed"] == 1
    for row, q in zip(rows, loaded):
        logits = answer_logits(model, processor, q, root / "videos")
        assert row["pred"] == "ABCD"[int(torch.argmax(logits))]
    by_type = {}
    for row in rows:
        by_type.setdefault(row["type"], []).append(row["pred"] == row["answer"])
    assert result["per_type"] == {t: 100.0 * sum(v) / len(v) for t, v in sorted(by_type.items())}
