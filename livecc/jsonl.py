"""JSONL files that jobs append to as they go (predictions, verdicts, caches).

A job killed while writing leaves a torn last line; a rerun must be able to read what came before
it and append after it. Any other broken line is an error naming the file and the line.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

__all__ = ["JsonlError", "append_row", "read_rows", "write_rows"]


class JsonlError(ValueError):
    """A line of a JSONL file that is not a JSON object; the message names file and line."""


def read_rows(path: str | Path, *, required: tuple[str, ...] = (), repair: bool = False) -> list[dict]:
    """The objects of a JSONL file (none when it does not exist), each with the ``required`` keys.

    With ``repair``, a last line that does not end in a newline and does not parse (a torn write)
    is cut off the file; without it, that is an error like any other broken line."""
    path = Path(path)
    if not path.is_file():
        return []
    data = path.read_bytes()
    lines = data.split(b"\n")
    torn = lines.pop()  # after the last newline: b"" unless the last write was torn
    rows = []
    for n, line in enumerate(lines, 1):
        if line.strip():
            rows.append(_parse(line, path, n, required))
    if torn.strip():
        try:
            rows.append(_parse(torn, path, len(lines) + 1, required))
        except JsonlError:
            if not repair:
                raise
            with open(path, "r+b") as f:
                f.truncate(len(data) - len(torn))
    return rows


def _parse(line: bytes, path: Path, n: int, required: tuple[str, ...]) -> dict:
    try:
        row = json.loads(line)
    except (ValueError, RecursionError) as e:
        raise JsonlError(f"{path}: line {n} is broken JSON ({type(e).__name__}: {e})") from e
    if not isinstance(row, dict):
        raise JsonlError(f"{path}: line {n} is not a JSON object")
    missing = [k for k in required if k not in row]
    if missing:
        raise JsonlError(f"{path}: line {n} lacks {', '.join(map(repr, missing))}")
    return row


def append_row(file, row: dict) -> None:
    """Append one object to an open text file and flush it, so a kill loses at most this line."""
    file.write(json.dumps(row, ensure_ascii=False) + "\n")
    file.flush()


def write_rows(path: str | Path, rows: list[dict]) -> None:
    """Replace a JSONL file atomically (write beside it, then rename)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    os.replace(tmp, path)
