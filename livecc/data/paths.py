"""Paths that come from data (records, events, questions) resolved under their root.

A dataset is read from untrusted files: a record's ``"video": "../../etc/passwd"`` must not open a
file outside the data root. The check is lexical and happens before any file-system access, so the
error never tells whether the file exists; symbolic links placed inside the root are trusted.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["UnsafePathError", "resolve_under", "video_under"]


class UnsafePathError(ValueError):
    """A path from data that is absolute or leaves its root."""


def resolve_under(root: str | os.PathLike | None, path, *, source: str, allow_absolute: bool = False) -> Path:
    """``path`` (a string from ``source``) under ``root`` (default: the working directory).

    An absolute path is refused unless ``allow_absolute``; a relative one may not climb out of
    ``root`` with ``..``."""
    if not isinstance(path, str) or not path:
        raise ValueError(f"{source}: a path must be a non-empty string, got {path!r}")
    if "\x00" in path:
        raise UnsafePathError(f"{source}: path {path!r} holds a NUL byte")
    if os.path.isabs(path):
        if allow_absolute:
            return Path(path)
        raise UnsafePathError(f"{source}: absolute path {path!r} refused (allow absolute paths explicitly to use it)")
    normal = os.path.normpath(path)
    if normal == ".." or normal.startswith(".." + os.sep):
        raise UnsafePathError(f"{source}: path {path!r} leaves its root")
    return Path(root) / normal if root is not None else Path(normal)


def video_under(root: str | os.PathLike | None, video, *, source: str, allow_absolute: bool = False) -> Path:
    """:func:`resolve_under` for a video that must exist: when it does not, the error names the
    directory searched and how to give another one."""
    path = resolve_under(root, video, source=source, allow_absolute=allow_absolute)
    if not path.is_file():
        searched = Path(root).resolve() if root is not None else Path.cwd()
        raise FileNotFoundError(f"{source}: video {video!r} not found under {searched} (the video root: "
                                "--video-root on the command line, video_root in a training config)")
    return path
