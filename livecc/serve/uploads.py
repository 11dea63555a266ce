"""Request bodies read with limits: an upload is written to disk part by part as it arrives and
refused (413) the moment it passes its limit, never spooled whole first; a JSON body likewise, and
it must be an object."""

from __future__ import annotations

import json
from pathlib import Path

from fastapi import HTTPException, Request
from python_multipart.multipart import MultipartParser, parse_options_header

__all__ = ["parse_json", "read_json", "receive_upload"]

FIELD_LIMIT = 16 << 10  # bytes of a form field that is not the file


def _too_large(what: str, limit: int) -> HTTPException:
    # closing the connection stops the rest of the body, which the server would otherwise read and drop
    return HTTPException(413, f"{what} larger than {_size(limit)}", headers={"Connection": "close"})


async def _limited_chunks(request: Request, limit: int, what: str):
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _too_large(what, limit)
    total = 0
    async for chunk in request.stream():
        total += len(chunk)
        if total > limit:
            raise _too_large(what, limit)
        yield chunk


def _size(n: int) -> str:
    return f"{n >> 20} MiB" if n >= 1 << 20 else f"{n >> 10} KiB"


def parse_json(text: str | bytes, what: str) -> dict:
    """The JSON object ``text`` holds, or a ValueError naming ``what`` and what is wrong (not JSON,
    nested deeper than the parser goes, not an object)."""
    try:
        value = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{what} is not JSON ({e.msg if hasattr(e, 'msg') else e})") from e
    except RecursionError as e:
        raise ValueError(f"{what} is nested too deeply") from e
    if not isinstance(value, dict):
        raise ValueError(f"{what} must be a JSON object, not {type(value).__name__}")
    return value


async def read_json(request: Request, limit: int = 64 << 10) -> dict:
    """The request's JSON object, or 400/413 saying what is wrong with it."""
    body = b"".join([chunk async for chunk in _limited_chunks(request, limit, "a JSON body")])
    try:
        return parse_json(body, "the body")
    except ValueError as e:
        raise HTTPException(400, str(e)) from e


async def receive_upload(request: Request, path: Path, limit: int) -> dict[str, str]:
    """Write the multipart body's ``file`` part to ``path`` as it arrives, at most ``limit``
    bytes of body; return the other fields (text). Nothing is left at ``path`` when it fails."""
    kind, params = parse_options_header(request.headers.get("content-type"))
    if kind != b"multipart/form-data" or b"boundary" not in params:
        raise HTTPException(400, "an upload is a multipart/form-data body with a 'file' part")
    fields: dict[str, str] = {}
    part: dict = {}
    out = None

    def on_part_begin():
        part.clear()
        part.update(headers={}, field=b"", value=bytearray())

    def on_header_field(data, start, end):
        part["field"] += data[start:end]

    def on_header_value(data, start, end):
        name = part["field"].decode("latin-1").lower()
        part["headers"][name] = part["headers"].get(name, b"") + data[start:end]

    def on_header_end():
        part["field"] = b""

    def on_headers_finished():
        nonlocal out
        _, disposition = parse_options_header(part["headers"].get("content-disposition"))
        part["name"] = disposition.get(b"name", b"").decode("utf-8", "replace")
        if b"filename" in disposition and part["name"] == "file":
            if out is not None:
                raise HTTPException(400, "an upload has one 'file' part")
            out = open(path, "wb")
            part["file"] = True

    def on_part_data(data, start, end):
        if part.get("file"):
            out.write(data[start:end])
        else:
            part["value"] += data[start:end]
            if len(part["value"]) > FIELD_LIMIT:
                raise _too_large(f"form field {part['name']!r}", FIELD_LIMIT)

    def on_part_end():
        if not part.get("file"):
            fields[part["name"]] = part["value"].decode("utf-8", "replace")

    parser = MultipartParser(params[b"boundary"], {
        "on_part_begin": on_part_begin, "on_header_field": on_header_field, "on_header_value": on_header_value,
        "on_header_end": on_header_end, "on_headers_finished": on_headers_finished, "on_part_data": on_part_data,
        "on_part_end": on_part_end})
    try:
        async for chunk in _limited_chunks(request, limit, "upload"):
            parser.write(chunk)
        parser.finalize()
        if out is None:
            raise HTTPException(400, "an upload needs a 'file' part")
    except Exception as e:
        if out is not None:
            out.close()
        path.unlink(missing_ok=True)
        if isinstance(e, HTTPException):
            raise
        raise HTTPException(400, f"a malformed multipart body ({type(e).__name__})") from e
    out.close()
    return fields
