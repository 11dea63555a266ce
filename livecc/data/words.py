"""Word-timed transcripts from the caption formats people actually have.

Every parser returns a list of :class:`Word` (absolute seconds in the source video). Caption
segments without word times are split evenly over their words, as the LiveCC reference does for
YouTube closed captions. Results are validated: finite, non-negative, ``start <= end``, sorted by
start. Anything else raises :class:`TranscriptError` naming the file and the entry.
"""

from __future__ import annotations

import html
import io
import json
import math
import re
from collections import deque
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import NamedTuple

__all__ = [
    "MAX_TRANSCRIPT_BYTES",
    "TranscriptError",
    "Word",
    "load_words",
    "parse_json3",
    "parse_srt",
    "parse_vtt",
    "parse_whisper_json",
    "split_evenly",
    "validate_words",
]


class Word(NamedTuple):
    start: float
    end: float
    text: str


class TranscriptError(ValueError):
    """A transcript that cannot be read; the message names the source and the entry."""


def split_evenly(start: float, end: float, text: str) -> list[Word]:
    """Give each whitespace-separated word of ``text`` an equal share of ``[start, end]``."""
    tokens = text.split()
    if not tokens:
        return []
    step = (end - start) / len(tokens)
    return [Word(start + i * step, start + (i + 1) * step, t) for i, t in enumerate(tokens)]


def validate_words(words: Sequence[Word], source: str) -> list[Word]:
    """Check finiteness, sign, ``start <= end`` and ordering by start; return the list."""
    previous_start = -math.inf
    for i, w in enumerate(words):
        where = f"{source}: word {i} ({w.text!r}, {w.start!r}-{w.end!r})"
        if not (math.isfinite(w.start) and math.isfinite(w.end)):
            raise TranscriptError(f"{where}: time is not finite")
        if w.start < 0:
            raise TranscriptError(f"{where}: negative time")
        if w.start > w.end:
            raise TranscriptError(f"{where}: start after end")
        if w.start < previous_start:
            raise TranscriptError(f"{where}: starts before the previous word")
        previous_start = w.start
    return list(words)


# ---------------------------------------------------------------- YouTube json3


def parse_json3(data: dict, source: str = "<json3>") -> list[Word]:
    """YouTube ``json3`` captions: ``events`` with ``tStartMs``/``dDurationMs`` and ``segs``.

    ASR captions give each seg a ``tOffsetMs``: a seg spans from its offset to the next seg's
    (or the event's end). Manual captions give one seg for the whole event: split evenly.
    """
    events = _require(data, "events", list, source)
    words: list[Word] = []
    for i, event in enumerate(events):
        where = f"{source}: event {i}"
        if not isinstance(event, dict):
            raise TranscriptError(f"{where}: not an object")
        segs = event.get("segs")
        if not segs:
            continue
        if not isinstance(segs, list) or not all(isinstance(seg, dict) for seg in segs):
            raise TranscriptError(f"{where}: 'segs' must be a list of objects")
        start = _number(event, "tStartMs", where, minimum=0.0) / 1000
        end = start + _number(event, "dDurationMs", where, default=0.0, minimum=0.0) / 1000
        offsets = [start + _number(s, "tOffsetMs", where, default=0.0, minimum=0.0) / 1000 for s in segs]
        for j, seg in enumerate(segs):
            seg_end = offsets[j + 1] if j + 1 < len(segs) else max(end, offsets[j])
            text = seg.get("utf8", "")
            if not isinstance(text, str):
                raise TranscriptError(f"{where}: seg {j} 'utf8' is not text ({text!r})")
            words.extend(split_evenly(offsets[j], seg_end, text))
    return validate_words(words, source)


# ---------------------------------------------------------------- WebVTT and SRT
# Line by line, strictly: every block is a cue (optional identifier, timing line, text) or, in
# WebVTT, a NOTE / STYLE / REGION block; anything else, and any timing line that does not parse
# exactly (a sign, minutes or seconds >= 60, a missing arrow), is an error naming file and line.

_VTT_TIME = r"(?:(\d+):)?(\d{2}):(\d{2})\.(\d{3})"
_SRT_TIME = r"(\d{1,3}):(\d{2}):(\d{2})[,.](\d{3})"
_VTT_TIMING = re.compile(rf"^\s*{_VTT_TIME}\s+-->\s+{_VTT_TIME}(?:\s+.*)?$")
_SRT_TIMING = re.compile(rf"^\s*{_SRT_TIME}\s*-->\s*{_SRT_TIME}(?:\s+.*)?$")
_INLINE_TIME = re.compile(r"<((?:\d+:)?\d{2}:\d{2}\.\d{3})>")
_TAG = re.compile(r"<[^>]*>")


def _seconds(hours, minutes, seconds, millis, where: str) -> float:
    if int(minutes) >= 60 or int(seconds) >= 60:
        raise TranscriptError(f"{where}: minutes and seconds must be below 60")
    return int(hours or 0) * 3600 + int(minutes) * 60 + int(seconds) + int(millis) / 1000


def _inline_clock(text: str, where: str) -> float:
    m = re.fullmatch(_VTT_TIME, text)
    if m is None:
        raise TranscriptError(f"{where}: bad timestamp {text!r}")
    return _seconds(*m.groups(), where)


def _blocks(text: str) -> Iterator[tuple[int, list[str]]]:
    """``(first line number, lines)`` of each block; blocks end at an empty line (YouTube puts
    lines holding one space inside cues)."""
    block, first = [], 0
    for n, line in enumerate(io.StringIO(text), 1):
        line = line.rstrip("\r\n")
        if line == "":
            if block:
                yield first, block
            block = []
        else:
            first = first if block else n
            block.append(line)
    if block:
        yield first, block


def _cues(text: str, source: str, timing: re.Pattern, kind: str,
          skip: tuple[str, ...] = ()) -> Iterator[tuple[float, float, list[str], str]]:
    """``(start, end, text lines, where)`` of every cue; a block that is not one is an error."""
    for first, lines in _blocks(text):
        if lines[0].startswith(skip):
            continue
        k = 1 if "-->" not in lines[0] and len(lines) > 1 and "-->" in lines[1] else 0  # an identifier may come first
        where = f"{source}: line {first + k}"
        m = timing.match(lines[k])
        if m is None:
            raise TranscriptError(f"{where}: not {kind} cue timing line ({lines[k][:80]!r})")
        start, end = _seconds(*m.groups()[:4], where), _seconds(*m.groups()[4:], where)
        yield start, end, lines[k + 1 :], where


def parse_vtt(text: str, source: str = "<vtt>") -> list[Word]:
    """WebVTT, plain cues or YouTube auto-captions with inline ``<00:00:01.234><c> word</c>`` times.

    YouTube's rolling captions repeat the last timed line as plain text in the next cues: a plain
    line equal to one of the two latest timed lines is such a repeat. Every other plain line holds
    new words, split evenly over its cue, whether or not the file has inline times elsewhere."""
    body = text.lstrip("\ufeff")
    if not body.startswith("WEBVTT"):
        raise TranscriptError(f"{source}: not a WebVTT file (no WEBVTT header)")
    words: list[Word] = []
    recent: deque[str] = deque(maxlen=2)  # texts of the latest lines with inline times
    blocks = ("WEBVTT", "NOTE", "STYLE", "REGION")  # the header block, comments and settings
    for start, end, lines, where in _cues(body, source, _VTT_TIMING, "a WebVTT", skip=blocks):
        for line in lines:
            if _INLINE_TIME.search(line):
                words.extend(_inline_words(line, start, end, where))
                recent.append(_plain(line))
            elif (plain := _plain(line)) and plain not in recent:
                words.extend(split_evenly(start, end, plain))
    return validate_words(words, source)


def _plain(line: str) -> str:
    """A caption line's text: tags and inline times removed, entities decoded, spaces normalised."""
    return " ".join(html.unescape(_TAG.sub("", line)).split())


def _inline_words(line: str, cue_start: float, cue_end: float, where: str) -> list[Word]:
    """One line of inline-timed text: each piece runs from its timestamp to the next one."""
    pieces = _INLINE_TIME.split(line)  # text, time, text, time, text ...
    times = [cue_start] + [_inline_clock(t, where) for t in pieces[1::2]]
    texts = [html.unescape(_TAG.sub("", p)) for p in pieces[0::2]]
    words = []
    for k, piece in enumerate(texts):
        piece_end = times[k + 1] if k + 1 < len(times) else max(cue_end, times[k])
        words.extend(split_evenly(times[k], piece_end, piece))
    return words


def parse_srt(text: str, source: str = "<srt>") -> list[Word]:
    """SubRip: numbered cues ``00:00:01,000 --> 00:00:04,000``, each split evenly."""
    words: list[Word] = []
    found = False
    for start, end, lines, _ in _cues(text.lstrip("\ufeff"), source, _SRT_TIMING, "an SRT"):
        found = True
        words.extend(split_evenly(start, end, html.unescape(_TAG.sub("", " ".join(lines)))))
    if not found and text.strip("\ufeff \r\n\t"):
        raise TranscriptError(f"{source}: no SRT cue found")
    return validate_words(words, source)


# ---------------------------------------------------------------- WhisperX / faster-whisper


def parse_whisper_json(data: dict | list, source: str = "<whisper>") -> list[Word]:
    """WhisperX or faster-whisper output: ``segments`` (or a bare list) with ``words``.

    WhisperX leaves words it could not align without times; they share the gap between their
    timed neighbours (or the segment bounds) evenly. A segment without ``words`` is split evenly.
    """
    segments = data if isinstance(data, list) else _require(data, "segments", list, source)
    words: list[Word] = []
    for i, seg in enumerate(segments):
        where = f"{source}: segment {i}"
        if not isinstance(seg, dict):
            raise TranscriptError(f"{where}: not an object")
        seg_start, seg_end = _number(seg, "start", where), _number(seg, "end", where)
        seg_words = seg.get("words")
        if not seg_words:
            words.extend(split_evenly(seg_start, seg_end, str(seg.get("text", ""))))
            continue
        words.extend(_fill_untimed(seg_words, seg_start, seg_end, where))
    return validate_words(words, source)


def _fill_untimed(entries: list, seg_start: float, seg_end: float, where: str) -> list[Word]:
    words: list[Word] = []
    pending: list[str] = []  # untimed words waiting for the next timed one
    cursor = seg_start
    for j, entry in enumerate(entries):
        if not isinstance(entry, dict) or "word" not in entry:
            raise TranscriptError(f"{where}: word {j} has no 'word'")
        text = str(entry["word"]).strip()
        if "start" not in entry or "end" not in entry:
            pending.append(text)
            continue
        start, end = _number(entry, "start", f"{where} word {j}"), _number(entry, "end", f"{where} word {j}")
        words.extend(split_evenly(cursor, start, " ".join(pending)))
        pending = []
        words.append(Word(start, end, text))
        cursor = end
    words.extend(split_evenly(cursor, max(cursor, seg_end), " ".join(pending)))
    return [w for w in words if w.text]


# ---------------------------------------------------------------- dispatch


MAX_TRANSCRIPT_BYTES = 64 * 2**20  # a day of dense YouTube auto-captions is ~15 MB


def load_words(path: str | Path, max_bytes: int = MAX_TRANSCRIPT_BYTES) -> list[Word]:
    """Read a transcript file, choosing the parser from its suffix (``.json3``, ``.vtt``, ``.srt``,
    ``.json``); a ``.json`` holding ``events`` is read as json3. A file over ``max_bytes`` (or a
    device that never ends) is an error: parsing holds the text and its words in memory."""
    path = Path(path)
    source = str(path)
    try:
        with open(path, "rb") as f:
            data = f.read(max_bytes + 1)
    except FileNotFoundError as e:
        raise TranscriptError(f"{source}: file not found") from e
    except OSError as e:
        raise TranscriptError(f"{source}: cannot read ({e.strerror or e})") from e
    if len(data) > max_bytes:
        raise TranscriptError(f"{source}: larger than the {max_bytes >> 20} MiB transcript limit")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise TranscriptError(f"{source}: not UTF-8 text ({e})") from e
    suffix = path.suffix.lower()
    if suffix == ".vtt":
        return parse_vtt(text, source)
    if suffix == ".srt":
        return parse_srt(text, source)
    if suffix in (".json", ".json3"):
        try:
            data = json.loads(text)
        except (json.JSONDecodeError, RecursionError) as e:
            raise TranscriptError(f"{source}: broken JSON ({e})") from e
        if isinstance(data, dict) and "events" in data:
            return parse_json3(data, source)
        return parse_whisper_json(data, source)
    raise TranscriptError(f"{source}: unknown transcript format {suffix!r} (json3, vtt, srt, json)")


def _require(data, key: str, kind: type, source: str):
    if not isinstance(data, dict) or not isinstance(data.get(key), kind):
        raise TranscriptError(f"{source}: missing {key!r} ({kind.__name__})")
    return data[key]


def _number(obj, key: str, where: str, default: float | None = None, minimum: float | None = None) -> float:
    value = obj.get(key, default) if isinstance(obj, dict) else None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TranscriptError(f"{where}: {key!r} is not a number ({value!r})")
    if minimum is not None and not value >= minimum:  # also refuses NaN
        raise TranscriptError(f"{where}: {key!r} is below {minimum:g} ({value!r})")
    return float(value)
