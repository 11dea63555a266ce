"""Clipping (``docs/spec.md`` section 3): A1 for pre-training, B3 for SFT, B1 metadata filters, top-N ranking.

An input line describes one video: ``{"video": ..., "transcript": PATH}`` (json3 / WebVTT / SRT /
WhisperX, see :mod:`livecc.data.words`) or ``"words": [[start, end, word], ...]``, plus optional
``title``, ``category``, ``language`` and ``language_score``. The output is Live-CC records.
"""

from __future__ import annotations

import heapq
import json
import math
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from ..paths import resolve_under, video_under
from ..records import ClipRecord
from ..words import Word, load_words, validate_words
from .runner import Outcome, _lines

__all__ = ["ClipRules", "ClipStage", "RankStage", "cut_clips", "rank_threshold", "split_at_gaps", "vocabulary_size"]

SENTENCE_END = (".", "?", "!")
_WORD = re.compile(r"[\w']+")


@dataclass(frozen=True)
class ClipRules:
    max_gap: float = 3.0  # split where the silence between words is longer
    max_duration: float = 240.0
    min_duration: float = 30.0
    min_rate: float = 1.0  # words per second, inclusive
    max_rate: float = 4.0
    sft: bool = False  # B3: clips start at a sentence start, after a sentence end
    previous_words: int = 64  # pre-training context: the ASR just before the clip


def split_at_gaps(words: list[Word], max_gap: float) -> list[range]:
    """Index runs of words with no silence longer than ``max_gap`` between one's end and the next's start."""
    runs, begin = [], 0
    for i in range(1, len(words) + 1):
        if i == len(words) or words[i].start - words[i - 1].end > max_gap:
            runs.append(range(begin, i))
            begin = i
    return runs if words else []


def is_sentence_start(words: list[Word], i: int) -> bool:
    """A capitalised word that opens the transcript or follows a word ending a sentence."""
    return words[i].text[:1].isupper() and (i == 0 or words[i - 1].text.endswith(SENTENCE_END))


def _cut(run: range, words: list[Word], rules: ClipRules) -> list[tuple[range, str | None]]:
    """Cut a run of word indices into pieces of at most ``max_duration``: ``(piece, why dropped)``."""
    longest = rules.max_duration
    if not rules.sft:
        pieces, begin = [], run.start
        for i in run:
            if words[i].end - words[begin].start > longest:
                pieces.append((range(begin, i), None))
                begin = i
        return pieces + [(range(begin, run.stop), None)]
    # SFT: whole sentences, each piece starting at a sentence start.
    starts = [i for i in run if is_sentence_start(words, i)]
    ends = starts[1:] + [run.stop]
    first = starts[0] if starts else run.stop
    pieces = [(range(run.start, first), "not_sentence_start")] if first > run.start else []
    k = 0
    while k < len(starts):
        begin, j = starts[k], k
        while j + 1 < len(starts) and words[ends[j + 1] - 1].end - words[begin].start <= longest:
            j += 1
        too_long = words[ends[j] - 1].end - words[begin].start > longest  # one sentence over the limit
        pieces.append((range(begin, ends[j]), "sentence_too_long" if too_long else None))
        k = j + 1
    return pieces


def cut_clips(words: list[Word], rules: ClipRules) -> list[tuple[list[Word], str | None, str]]:
    """``(clip words, drop reason or None, previous text)`` for every candidate clip, in time order."""
    out = []
    for run in split_at_gaps(words, rules.max_gap):
        for piece, reason in _cut(run, words, rules):
            clip = words[piece.start:piece.stop]
            if reason is None:
                reason = _check(clip, rules)
            before = words[max(0, piece.start - rules.previous_words):piece.start]
            out.append((clip, reason, "" if rules.sft else " ".join(w.text for w in before)))
    return out


def _check(clip: list[Word], rules: ClipRules) -> str | None:
    duration = clip[-1].end - clip[0].start
    if duration < rules.min_duration:
        return "too_short"
    rate = len(clip) / duration
    if not rules.min_rate <= rate <= rules.max_rate:
        return "speech_rate"
    return None


def vocabulary_size(words: list[Word]) -> int:
    """Distinct words, case- and punctuation-insensitive."""
    return len({m.lower() for w in words for m in _WORD.findall(w.text)})


class ClipStage:
    """One video's transcript -> Live-CC records of its clips that pass the rules and B1 filters."""

    name = "clips"

    def __init__(self, rules: ClipRules = ClipRules(), transcript_root: str | Path | None = None,
                 categories: set[str] | None = None, language: str | None = None,
                 min_language_score: float = 0.9, video_root: str | Path | None = None,
                 allow_absolute_paths: bool = False):
        self.rules, self.transcript_root, self.video_root = rules, transcript_root, video_root
        self.categories, self.language, self.min_language_score = categories, language, min_language_score
        self.allow_absolute_paths = allow_absolute_paths

    def _words(self, item: dict, source: str) -> list[Word]:
        if "words" in item:
            raw = item["words"]
            if not isinstance(raw, list) or not all(isinstance(w, list) and len(w) == 3 for w in raw):
                raise ValueError(f"{source}: 'words' must be a list of [start, end, word]")
            return validate_words([Word(float(s), float(e), str(w)) for s, e, w in raw], f"{source}: words")
        path = resolve_under(self.transcript_root, item["transcript"], source=f"{source}: transcript",
                             allow_absolute=self.allow_absolute_paths)
        return load_words(path)

    def _check_video(self, video, source: str) -> None:
        """The record's video must be a path under the video root (and exist there, when the root is given)."""
        if self.video_root is not None:
            video_under(self.video_root, video, source=source, allow_absolute=self.allow_absolute_paths)
        else:
            resolve_under(None, video, source=f"{source}: video", allow_absolute=self.allow_absolute_paths)

    def _metadata_reason(self, item: dict) -> str | None:
        if self.categories is not None and item.get("category") not in self.categories:
            return "category"
        if self.language is not None:
            score = item.get("language_score", 1.0)
            good = isinstance(score, (int, float)) and math.isfinite(score) and score >= self.min_language_score
            if item.get("language") != self.language or not good:
                return "language"
        return None

    def process(self, items: list[tuple[int, object]]) -> list[Outcome]:
        return [self._one(index, item) for index, item in items]

    def _one(self, index: int, item) -> Outcome:
        source = f"input {index}"
        try:
            if not isinstance(item, dict) or "video" not in item or not ({"words", "transcript"} & item.keys()):
                raise ValueError("expected an object with 'video' and 'transcript' or 'words'")
            self._check_video(item["video"], source)
            if (reason := self._metadata_reason(item)) is not None:
                return Outcome(dropped=[(reason, {k: v for k, v in item.items() if k != "words"})])
            words = self._words(item, source)
        except (ValueError, TypeError, KeyError, OSError) as e:
            return Outcome.failed(e)
        outcome = Outcome()
        meta = {k: item[k] for k in ("category", "language") if k in item}
        for clip, reason, previous in cut_clips([w for w in words if w.text.strip()], self.rules):
            record = ClipRecord(video=item["video"], video_start=clip[0].start, video_end=clip[-1].end, words=clip,
                                title=str(item.get("title", "")), previous=previous,
                                meta={**meta, "vocab": vocabulary_size(clip)}).to_messages()
            if reason is None:
                outcome.kept.append(record)
            else:
                outcome.dropped.append((reason, record))
        if not outcome.kept and not outcome.dropped:
            outcome.dropped.append(("no_words", {k: v for k, v in item.items() if k != "words"}))
        return outcome


def _vocab(messages) -> int:
    """The vocabulary size stored on a clip by :class:`ClipStage`."""
    return int(ClipRecord.from_messages(messages).meta["vocab"])


def _rank_key(messages) -> tuple[int, tuple[str, float, float]]:
    """A clip's vocabulary size and its tie-breaker: the clip itself (video, start, end), which no
    sharding or file order changes."""
    record = ClipRecord.from_messages(messages)
    return int(record.meta["vocab"]), (record.video, record.video_start, record.video_end)


def _clip_key(line: bytes) -> tuple[int, tuple] | None:
    """:func:`_rank_key` of a clip line; None for anything else (broken, nested too deep, seek line)."""
    try:
        return _rank_key(json.loads(line))
    except (ValueError, KeyError, TypeError, RecursionError):
        return None


def rank_threshold(paths: list[str | Path], top: int) -> tuple[int, tuple | None]:
    """Two passes over clip files: ``(v, last)`` such that keeping clips with vocabulary > v, and
    those with vocabulary == v whose tie-breaker is at most ``last``, keeps the ``top`` largest
    (ties broken by the clip, the same however the clips were sharded). Memory: a histogram of
    vocabulary sizes and the tie-breakers of the clips tied at the cut."""
    if top < 1:
        raise ValueError(f"top must be >= 1, got {top}")
    histogram = Counter(k[0] for _, _, line in _lines(paths) if (k := _clip_key(line)) is not None)
    above = 0
    for v in sorted(histogram, reverse=True):
        if above + histogram[v] >= top:
            break
        above += histogram[v]
    else:
        return -1, None  # no more than `top` clips: keep all
    tied = (k[1] for _, _, line in _lines(paths) if (k := _clip_key(line)) is not None and k[0] == v)
    return v, heapq.nsmallest(top - above, tied)[-1]


class RankStage:
    """Keep the ``top`` clips with the largest vocabulary (A1), from :func:`rank_threshold`."""

    name = "rank"

    def __init__(self, threshold: tuple[int, tuple | None]):
        self.vocab, self.last = threshold

    def process(self, items: list[tuple[int, object]]) -> list[Outcome]:
        outcomes = []
        for _, record in items:
            try:
                v, key = _rank_key(record)
            except (ValueError, KeyError, TypeError) as e:
                outcomes.append(Outcome.failed(e))
                continue
            keep = v > self.vocab or (v == self.vocab and key <= self.last)
            outcomes.append(Outcome(kept=[record]) if keep else Outcome(dropped=[("rank", record)]))
        return outcomes
