"""Multiple-choice video QA scored from the logits of the option letters after ``Answer:``.

Question files are JSON or JSONL in the shapes of LiveSports-3K QA, VideoMME, MVBench and
OVOBench; :func:`normalize_question` maps their field names onto one :class:`Question`.
"""

from __future__ import annotations

import json
import re
import string
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from ..data.paths import video_under
from ..data.video import decode_clip
from ..jsonl import write_rows
from ..qwen_vl import VisionSpec, clip_frame_size, video_prompt_logits

__all__ = ["Question", "answer_logits", "load_questions", "normalize_question", "score_mcq"]

LETTERS = string.ascii_uppercase
_LETTER_PREFIX = re.compile(r"^\s*\(?([A-Z])[.):]\s+")


@dataclass
class Question:
    video: str
    question: str
    options: list[str]
    answer: str  # a letter
    qtype: str = ""
    start: float | None = None
    end: float | None = None
    qid: str = ""


def _first(d: dict, *keys, default=None):
    return next((d[k] for k in keys if k in d and d[k] is not None), default)


def normalize_question(d: dict, where: str = "<question>", qtype: str = "") -> Question:
    """One question from any of the supported benchmark shapes; a missing field is an error."""
    video = _first(d, "video", "video_path", "videoID", "video_id")
    options = _first(d, "options", "candidates", "choices")
    answer = _first(d, "answer", "gt", "label")
    if video is None or options is None or answer is None or "question" not in d:
        raise ValueError(f"{where}: needs video, question, options/candidates and answer (got {sorted(d)})")
    video = str(video)
    if not Path(video).suffix:
        video += ".mp4"  # VideoMME names videos by id
    options = [_LETTER_PREFIX.sub("", str(o)) for o in options]
    if isinstance(answer, int):
        letter = LETTERS[answer]
    elif len(str(answer).strip()) == 1 and str(answer).strip().upper() in LETTERS[: len(options)]:
        letter = str(answer).strip().upper()
    elif _LETTER_PREFIX.sub("", str(answer)) in options:
        letter = LETTERS[options.index(_LETTER_PREFIX.sub("", str(answer)))]
    else:
        raise ValueError(f"{where}: answer {answer!r} is neither a letter nor one of the options")
    start = _first(d, "video_start", "begin", "start")
    end = _first(d, "video_end", "end")
    return Question(video=video, question=str(d["question"]), options=options, answer=letter,
                    qtype=str(_first(d, "task_type", "question_type", "type", "task", default=qtype)),
                    start=None if start is None else float(start), end=None if end is None else float(end),
                    qid=str(_first(d, "question_id", "id", "qid", default="")))


def load_questions(path: str | Path) -> list[Question]:
    """Questions of a JSON list, a JSONL file, or a MVBench-style JSON (the file name is the task)."""
    path = Path(path)
    text = path.read_text()
    try:
        rows = json.loads(text)
        rows = rows if isinstance(rows, list) else [rows]
    except json.JSONDecodeError:
        rows = []
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except (ValueError, RecursionError) as e:
                raise ValueError(f"{path}: line {n} is broken JSON ({e})") from e
    bad = next((i for i, r in enumerate(rows) if not isinstance(r, dict)), None)
    if bad is not None:
        raise ValueError(f"{path}: question {bad} is not a JSON object")
    return [normalize_question(r, f"{path}: question {i}", qtype=path.stem) for i, r in enumerate(rows)]


def _prompt(q: Question) -> str:
    options = "\n".join(f"{LETTERS[i]}. {o}" for i, o in enumerate(q.options))
    return (f"{q.question}\n{options}\nAnswer with the option's letter from the given choices directly.")


def answer_logits(model, processor, q: Question, video_root: str | Path, *, allow_absolute_paths: bool = False,
                  source: str = "<question>") -> torch.Tensor:
    """Logits of ``" A"``, ``" B"``, ... after the assistant's ``Answer:`` for one question."""
    tokenizer = getattr(processor, "tokenizer", processor)
    device = next(model.parameters()).device
    path = video_under(video_root, q.video, source=source, allow_absolute=allow_absolute_paths)
    clip = decode_clip(path, q.start, q.end, resize=False, device=str(device))
    factor = VisionSpec.from_processor(processor).factor
    size = clip_frame_size(clip.frames.shape[1], clip.frames.shape[2], len(clip.pts), factor=factor)
    logits = video_prompt_logits(model, processor, clip.frames, size, _prompt(q), "Answer:")
    letters = [tokenizer(f" {LETTERS[i]}", add_special_tokens=False).input_ids[-1] for i in range(len(q.options))]
    return logits[letters].float().cpu()


def score_mcq(model, processor, questions: list[Question], video_root: str | Path, out: str | Path | None = None,
              *, allow_absolute_paths: bool = False) -> dict:
    """Accuracy overall and per question type; a question that fails for any reason (its video
    missing or undecodable, ...) is counted by error type, never fatal."""
    per_type, failed, rows, errors = defaultdict(lambda: [0, 0]), [], [], Counter()
    for i, q in enumerate(tqdm(questions, desc="mcq", unit="question")):
        try:
            scores = answer_logits(model, processor, q, video_root, allow_absolute_paths=allow_absolute_paths,
                                   source=f"question {i}")
        except Exception as e:  # the question's boundary
            errors[type(e).__name__] += 1
            failed.append({"index": i, "error": f"{type(e).__name__}: {e}"})
            continue
        pick = LETTERS[int(scores.argmax())]
        per_type[q.qtype or "all"][0] += pick == q.answer
        per_type[q.qtype or "all"][1] += 1
        rows.append({"index": i, "qid": q.qid, "type": q.qtype, "pred": pick, "answer": q.answer,
                     "logits": [round(float(s), 4) for s in scores]})
    if out is not None:
        write_rows(out, rows)
    correct = sum(c for c, _ in per_type.values())
    total = sum(n for _, n in per_type.values())
    return {"accuracy": 100.0 * correct / total if total else float("nan"), "answered": total,
            "failed": len(failed), "failed_by_type": dict(errors), "failures": failed[:10],
            "per_type": {t: 100.0 * c / n for t, (c, n) in sorted(per_type.items())}}
