"""Live-CC-5M / Live-WhisperX-526K clip records and their seek-indexed JSONL files.

A record is one JSON line holding a two-message conversation (SPEC section 2). A dataset file
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

__all__ = ["ClipRecord", "RecordError", "RecordWriter", "SeekableRecords", "append_seek_line", "is_seek_line",
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
    title: str = ""
    previous: str = ""  # ASR just before the clip
    meta: dict = field(default_factory=dict)  # other keys of the user text element (category, loss, ...)

    @classmethod
    def from_messages(cls, messages: list, source: str = "<record>") -> ClipRecord:
        try:
            user, assistant = messages
            video_el = next(c for c in user["content"] if c.get("type") == "video")
            text_el = next((c for c in user["content"] if c.get("type") == "text"), {})
            stream_el = next(c for c in assistant["content"] if c.get("type") == "text_stream")
            raw_words = stream_el["text_stream"]
            words = [Word(float(s), float(e), str(w)) for s, e, w in raw_words]
        except (ValueError, TypeError, KeyError, StopIteration) as e:
            raise RecordError(f"{source}: not a Live-CC streaming record ({type(e).__name__}: {e})") from e
        start, end = video_el.get("video_start"), video_el.get("video_end")
        for name, value in (("video_start", start), ("video_end", end)):
            if value is not None and not (isinstance(value, (int, float)) and math.isfinite(value)):
                raise RecordError(f"{source}: {name} is not a finite number ({value!r})")
        if start is not None and end is not None and end <= start:
            raise RecordError(f"{source}: empty clip (video_start={start}, video_end={end})")
        try:
            validate_words(words, source)
        except ValueError as e:
            raise RecordError(str(e)) from e
        meta = {k: v for k, v in text_el.items() if k not in ("type", "text", "title", "previous")}
        return cls(
            video=str(video_el["video"]),
            video_start=None if start is None else float(start),
            video_end=None if end is None else float(end),
            words=words,
            query=text_el.get("text", ""),
            title=text_el.get("title", ""),
            previous=text_el.get("previous", ""),
            meta=meta,
        )

    def to_messages(self) -> list:
        video = {"type": "video", "video": self.video}
        if self.video_start is not None:
            video["video_start"] = self.video_start
        if self.video_end is not None:
            video["video_end"] = self.video_end
        text = {"type": "text", "text": self.query, "previous": self.previous, "title": self.title, **self.meta}
        stream = [[w.start, w.end, w.text] for w in self.words]
        return [
            {"role": "user", "content": [video, text]},
            {"role": "assistant", "content": [{"type": "text_stream", "text_stream": stream}]},
        ]


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

    Uses the trailing seek line when present; otherwise indexes the file in one pass.
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
        try:
            offsets = json.loads(last)
        except json.JSONDecodeError:
            return None
        return offsets if is_seek_line(offsets) else None

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
        except json.JSONDecodeError as e:
            raise RecordError(f"{self.path}: record {i} is broken JSON ({e})") from e

    def record(self, i: int) -> ClipRecord:
        return ClipRecord.from_messages(self[i], f"{self.path}: record {i}")


def read_records(path: str | Path) -> Iterator[list]:
    """Stream the raw messages of every record, skipping the seek line; constant memory."""
    with open(path, "rb") as f:
        for n, line in enumerate(f):
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except json.JSONDecodeError as e:
                raise RecordError(f"{path}: line {n + 1} is broken JSON ({e})") from e
            if is_seek_line(value):
                continue
            yield value


def is_seek_line(value) -> bool:
    """The trailing line of byte offsets (a record is a list of message objects)."""
    return isinstance(value, list) and all(isinstance(o, int) for o in value)


def _line_offsets(path: str | Path) -> list[int]:
    offsets, pos = [], 0
    with open(path, "rb") as f:
        for line in f:
            if line.strip():
                offsets.append(pos)
            pos += len(line)
    return offsets


def append_seek_line(path: str | Path) -> None:
    """Index a finished JSONL file of records: append the offsets of its lines as the seek line."""
    offsets = _line_offsets(path)
    with open(path, "ab") as f:
        f.write(json.dumps(offsets).encode() + b"\n")
