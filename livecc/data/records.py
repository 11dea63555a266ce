"""Live-CC-5M / Live-WhisperX-526K clip records and their seek-indexed JSONL files.

A record is one JSON line holding a two-message conversation (``docs/spec.md`` section 2). A dataset file
may end with a line that is a JSON list of the byte offset of every record, so that record ``i``
is one ``seek`` away; :class:`RecordWriter` writes it and :class:`SeekableRecords` reads it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from .words import Word, validate_words

__all__ = ["ClipRecord", "RecordError", "RecordWriter", "SeekableRecords", "append_seek_line", "iter_lines",
           "read_records"]


class RecordError(ValueError):
    """A record that does not have the Live-CC shape; the message says where."""


@dataclass
class ClipRecord:
    """One streaming clip: a video span and the words spoken in it (absolute seconds)."""

    video: str
    video_start: float | None
    video_end: float | None
    words: list[Word]
    query: str = ""  # the user text: empty for pre-training, the generated prompt for SFT
    title: str | None = None  # None: the record has no such key (the context rule tells the two apart)
    previous: str | None = None  # ASR just before the clip
    meta: dict = field(default_factory=dict)  # other keys of the user text element (category, loss, ...)

    @classmethod
    def from_messages(cls, messages, source: str = "<record>") -> ClipRecord:
        """Parse a record strictly: one user message with one video element and at most one text
        element, one assistant message with one ``text_stream``. Any other element is an error."""
        if not isinstance(messages, list) or len(messages) != 2:
            raise RecordError(f"{source}: not a Live-CC streaming record (expected [user, assistant] messages)")
        user = _elements(messages[0], "user", ("video", "text"), source)
        stream = _elements(messages[1], "assistant", ("text_stream",), source)
        if len(user["video"]) != 1 or len(user["text"]) > 1 or len(stream["text_stream"]) != 1:
            raise RecordError(f"{source}: a streaming record has one video, at most one text and one text_stream")
        video_el, text_el = user["video"][0], (user["text"] or [{}])[0]
        video = video_el.get("video")
        if not isinstance(video, str) or not video:
            raise RecordError(f"{source}: 'video' must be a non-empty path string, got {video!r}")
        start, end = video_el.get("video_start"), video_el.get("video_end")
        for name, value in (("video_start", start), ("video_end", end)):
            if value is not None and not (_is_number(value) and math.isfinite(value)):
                raise RecordError(f"{source}: {name} is not a finite number ({value!r})")
        if start is not None and end is not None and end <= start:
            raise RecordError(f"{source}: empty clip (video_start={start}, video_end={end})")
        for key in ("text", "title", "previous"):
            if key in text_el and not isinstance(text_el[key], str):
                raise RecordError(f"{source}: {key!r} must be a string, got {text_el[key]!r}")
        try:
            words = validate_words(_words(stream["text_stream"][0].get("text_stream"), source), source)
        except ValueError as e:
            raise RecordError(str(e)) from e
        meta = {k: v for k, v in text_el.items() if k not in ("type", "text", "title", "previous")}
        return cls(
            video=video,
            video_start=None if start is None else float(start),
            video_end=None if end is None else float(end),
            words=words,
            query=text_el.get("text", ""),
            title=text_el.get("title"),
            previous=text_el.get("previous"),
            meta=meta,
        )

    def to_messages(self) -> list:
        video = {"type": "video", "video": self.video}
        if self.video_start is not None:
            video["video_start"] = self.video_start
        if self.video_end is not None:
            video["video_end"] = self.video_end
        context = {k: v for k, v in (("previous", self.previous), ("title", self.title)) if v is not None}
        text = {"type": "text", "text": self.query, **context, **self.meta}
        stream = [[w.start, w.end, w.text] for w in self.words]
        return [
            {"role": "user", "content": [video, text]},
            {"role": "assistant", "content": [{"type": "text_stream", "text_stream": stream}]},
        ]


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _elements(message, role: str, kinds: tuple[str, ...], source: str) -> dict[str, list[dict]]:
    """A message's content elements by type; a type outside ``kinds`` is an error naming it."""
    if not isinstance(message, dict) or message.get("role") != role:
        raise RecordError(f"{source}: expected a {role} message")
    content = message.get("content")
    if not isinstance(content, list) or not all(isinstance(c, dict) for c in content):
        raise RecordError(f"{source}: the {role} message's content must be a list of elements")
    found: dict[str, list[dict]] = {kind: [] for kind in kinds}
    for element in content:
        kind = element.get("type")
        if kind not in found:
            raise RecordError(f"{source}: unsupported {kind!r} element in the {role} message of a streaming record")
        found[kind].append(element)
    return found


def _words(raw, source: str) -> list[Word]:
    if not isinstance(raw, list):
        raise RecordError(f"{source}: text_stream must be a list of [start, end, word]")
    words = []
    for i, item in enumerate(raw):
        if not (isinstance(item, list) and len(item) == 3 and _is_number(item[0]) and _is_number(item[1])
                and isinstance(item[2], str)):
            raise RecordError(f"{source}: text_stream entry {i} is not [start, end, word] ({item!r})"[:300])
        words.append(Word(float(item[0]), float(item[1]), item[2]))
    return words


class RecordWriter:
    """Write records one per line and, on close, the trailing seek-offset line."""

    def __init__(self, path: str | Path, with_seeks: bool = True):
        self.path = Path(path)
        self.with_seeks = with_seeks
        self._file = open(self.path, "wb")
        self._offsets: list[int] = []

    def write(self, record: ClipRecord | list) -> None:
        messages = record.to_messages() if isinstance(record, ClipRecord) else record
        self._offsets.append(self._file.tell())
        self._file.write(json.dumps(messages, ensure_ascii=False).encode() + b"\n")

    def close(self) -> None:
        if self.with_seeks:
            self._file.write(json.dumps(self._offsets).encode() + b"\n")
        self._file.close()

    def __enter__(self) -> RecordWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class SeekableRecords:
    """Random access to the raw messages of record ``i`` of a JSONL file.

    Uses the trailing seek line when it indexes the whole file; otherwise (no seek line, or files
    concatenated, each with its own) indexes the file in one pass.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"{self.path}: record file not found")
        seeks = self._read_seek_line()
        self.offsets = self._scan() if seeks is None else seeks

    def _read_seek_line(self) -> list[int] | None:
        with open(self.path, "rb") as f:
            f.seek(0, 2)
            size = f.tell()
            if size == 0:
                return None
            # Walk back from the end to the start of the last non-empty line.
            pos = size - 1
            f.seek(pos)
            while pos > 0 and f.read(1) in b"\n\r":
                pos -= 1
                f.seek(pos)
            while pos > 0:
                f.seek(pos - 1)
                if f.read(1) == b"\n":
                    break
                pos -= 1
            f.seek(pos)
            last = f.readline()
            return _seek_offsets(last, pos, f)

    def _scan(self) -> list[int]:
        return _line_offsets(self.path)

    def __len__(self) -> int:
        return len(self.offsets)

    def __getitem__(self, i: int) -> list:
        if not -len(self) <= i < len(self):
            raise IndexError(f"{self.path}: record {i} out of range ({len(self)} records)")
        with open(self.path, "rb") as f:
            f.seek(self.offsets[i])
            line = f.readline()
        try:
            return json.loads(line)
        except (json.JSONDecodeError, RecursionError) as e:
            raise RecordError(f"{self.path}: record {i} is broken JSON ({e})") from e

    def record(self, i: int) -> ClipRecord:
        return ClipRecord.from_messages(self[i], f"{self.path}: record {i}")


def read_records(path: str | Path) -> Iterator[list]:
    """Stream the raw messages of every record, leaving out the seek line; constant memory."""
    for n, _, line in iter_lines(path):
        try:
            yield json.loads(line)
        except (json.JSONDecodeError, RecursionError) as e:
            raise RecordError(f"{path}: line {n} is broken JSON ({type(e).__name__}: {e})") from e


def iter_lines(path: str | Path) -> Iterator[tuple[int, int, bytes]]:
    """``(line number, byte offset, line)`` of every non-empty line but seek lines.

    A seek line is recognised by its form and place, never by its type alone: a JSON list of
    exactly as many increasing integers as record lines before it (since the file's start or the
    previous seek line: files written with seek lines and concatenated keep one each), the first
    and the last those lines' offsets from where they began. Any other line, ``[]`` or ``[1, 2]``
    among records included, is a line of the file. Constant memory."""
    start, count, first, last, pos = 0, 0, None, None, 0
    with open(path, "rb") as f:
        for n, line in enumerate(f, 1):
            if line.strip():
                if _is_seek_line(line, count, first, last, start):
                    start, count, first, last = pos + len(line), 0, None, None
                else:
                    yield n, pos, line
                    count, first, last = count + 1, pos if first is None else first, pos
            pos += len(line)


def _is_seek_line(line: bytes, count: int, first: int | None, last: int | None, start: int) -> bool:
    head = line.lstrip()[:2]
    if not head.startswith(b"[") or not (head[1:].isdigit() or head[1:] in (b"]", b" ", b"")):
        return False  # records are lists of objects: only lists of numbers are parsed here
    try:
        values = json.loads(line)
    except (json.JSONDecodeError, RecursionError):
        return False
    if not _increasing_ints(values) or len(values) != count:
        return False
    return count == 0 or (values[0] == first - start and values[-1] == last - start)


def _increasing_ints(values) -> bool:
    return (isinstance(values, list) and all(type(v) is int for v in values)
            and all(a < b for a, b in zip(values, values[1:])))


def _seek_offsets(line: bytes, line_start: int, f) -> list[int] | None:
    """The offsets of a file's last line when it indexes the whole file (checked without a scan:
    increasing integers from 0, the last one the start of the line that ends where the seek line
    begins), else None: a file of several concatenated ones is scanned instead."""
    try:
        values = json.loads(line)
    except (json.JSONDecodeError, RecursionError):
        return None
    if not _increasing_ints(values):
        return None
    if not values:  # the seek line of an empty file is its only line
        return values if line_start == 0 else None
    if values[0] != 0 or values[-1] >= line_start:
        return None
    f.seek(values[-1])
    return values if values[-1] + len(f.readline()) == line_start else None


def _line_offsets(path: str | Path) -> list[int]:
    return [offset for _, offset, _ in iter_lines(path)]


def append_seek_line(path: str | Path) -> None:
    """Index a finished JSONL file of records: append the offsets of its lines as the seek line."""
    offsets = _line_offsets(path)
    with open(path, "ab") as f:
        f.write(json.dumps(offsets).encode() + b"\n")
