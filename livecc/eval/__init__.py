"""Evaluation: LiveSports-3K commentary with an LLM judge, and multiple-choice video QA."""

from .judge import judge_prompt, parse_verdict, run_judge
from .livesports import (
    Event,
    cc_generate,
    comment_on_clip,
    commentary_prompt,
    load_events,
    read_predictions,
    read_verdicts,
    win_rate,
)
from .mcq import Question, load_questions, normalize_question, score_mcq

__all__ = [
    "Event",
    "Question",
    "cc_generate",
    "comment_on_clip",
    "commentary_prompt",
    "judge_prompt",
    "load_events",
    "load_questions",
    "normalize_question",
    "parse_verdict",
    "read_predictions",
    "read_verdicts",
    "run_judge",
    "score_mcq",
    "win_rate",
]
