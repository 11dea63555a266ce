"""``livecc serve``: live commentary in the browser and over an HTTP API, on one streaming engine.

    GET  /                          the page (plain HTML and JS from the package; nothing fetched outside)
    POST /v1/streams                a stream from an upload (multipart ``file``) or a URL (JSON ``url``),
                                    with an optional ``query``  -> {"id": ...}
    GET  /v1/streams/{id}/events    its commentary as server-sent events {type, start, end, text, latency_ms}
    POST /v1/streams/{id}/ask       a question for its next window (JSON ``text``)
    GET  /v1/streams/{id}/vtt       its commentary so far as WebVTT
    DELETE /v1/streams/{id}         close it (its KV pages are freed at once)
    WS   /v1/ws                     frames in (JPEG, 2 per second), commentary and errors out
    GET  /v1/health, /v1/metrics

With an API key every request must carry it (``Authorization: Bearer KEY``, or ``?key=KEY`` for the
page's WebSocket). Uploads are written under server-chosen names in the upload directory, up to a
size limit; no request names a file the server reads.
"""

from __future__ import annotations

import asyncio
import io
import json
import queue
import secrets
from importlib import resources
from pathlib import Path

import numpy as np
import torch
from fastapi import FastAPI, File, Form, HTTPException, Request, UploadFile, WebSocket, WebSocketDisconnect
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, StreamingResponse
from PIL import Image

from ..data.video import VideoError
from .hub import Hub, HubFull, ServedStream
from .vtt import vtt_text

__all__ = ["create_app"]

URL_SCHEMES = ("http://", "https://", "rtsp://", "rtmp://", "udp://", "srt://")
UPLOAD_CHUNK = 1 << 20


def create_app(hub: Hub, *, api_key: str | None = None, max_upload_bytes: int = 512 << 20,
               realtime: bool = True) -> FastAPI:
    """The ASGI app over ``hub``. ``realtime=False`` reads uploads and URLs as fast as the engine
    goes (tests, batch use)."""
    app = FastAPI(title="livecc", version="0.1.0")
    page = resources.files("livecc.serve").joinpath("static/index.html").read_text()

    def authorize(request_key: str | None) -> None:
        if api_key and not (request_key and secrets.compare_digest(request_key, api_key)):
            raise HTTPException(401, "missing or wrong API key")

    def key_of(headers, params) -> str | None:
        auth = headers.get("authorization", "")
        return auth.removeprefix("Bearer ").strip() if auth.startswith("Bearer ") else params.get("key")

    @app.middleware("http")
    async def check_key(request: Request, call_next):
        if request.url.path.startswith("/v1/") and request.url.path != "/v1/health":
            try:
                authorize(key_of(request.headers, request.query_params))
            except HTTPException as e:
                return JSONResponse({"detail": e.detail}, status_code=e.status_code)
        return await call_next(request)

    def stream_of(stream_id: str) -> ServedStream:
        stream = hub.streams.get(stream_id)
        if stream is None:
            raise HTTPException(404, f"no stream {stream_id!r}")
        return stream

    @app.get("/", response_class=HTMLResponse)
    def index() -> str:
        return page

    @app.get("/v1/health")
    def health() -> dict:
        return {"status": "ok", "engine": hub.loop.is_alive()}

    @app.get("/v1/metrics")
    def metrics() -> dict:
        return hub.metrics()

    @app.post("/v1/streams", status_code=201)
    async def create(request: Request, file: UploadFile | None = File(None), query: str = Form(""),
                     url: str | None = Form(None)) -> dict:
        if file is None and url is None and request.headers.get("content-type", "").startswith("application/json"):
            body = await request.json()
            url, query = body.get("url"), body.get("query", "")
        if (file is None) == (url is None):
            raise HTTPException(400, "give either an uploaded file or a url")
        if url is not None:
            if not url.startswith(URL_SCHEMES):
                raise HTTPException(400, f"url must be a network stream ({', '.join(URL_SCHEMES)})")
            location = url
        else:
            location = str(await asyncio.to_thread(_save_upload, file, hub, max_upload_bytes))
        try:
            await asyncio.to_thread(_probe, location)
        except VideoError as e:
            if file is not None:
                Path(location).unlink(missing_ok=True)
            raise HTTPException(400, str(e).replace(str(hub.upload_dir), "upload")) from e
        try:
            stream = hub.open("url" if url else "upload", query)
        except HubFull as e:
            raise HTTPException(429, str(e)) from e
        hub.read(stream, location, realtime=realtime)
        return {"id": stream.id, "events": f"/v1/streams/{stream.id}/events"}

    @app.get("/v1/streams/{stream_id}/events")
    def events(stream_id: str) -> StreamingResponse:
        stream = stream_of(stream_id)
        inbox, missed = hub.subscribe(stream)

        def sse():
            for event in missed:  # what a late viewer missed
                yield f"data: {json.dumps(event)}\n\n"
            while True:
                try:
                    event = inbox.get(timeout=15)
                except queue.Empty:
                    if stream.closed:
                        return
                    yield ": keep-alive\n\n"
                    continue
                yield f"data: {json.dumps(event)}\n\n"
                if event["type"] == "end":
                    return

        return StreamingResponse(sse(), media_type="text/event-stream")

    @app.post("/v1/streams/{stream_id}/ask")
    async def ask(stream_id: str, request: Request) -> dict:
        text = (await request.json()).get("text", "")
        if not isinstance(text, str) or not text.strip():
            raise HTTPException(400, "ask needs a non-empty text")
        hub.ask(stream_of(stream_id), text)
        return {"asked": text}

    @app.get("/v1/streams/{stream_id}/vtt", response_class=PlainTextResponse)
    def vtt(stream_id: str) -> str:
        return vtt_text([(e["start"], e["end"], e["text"]) for e in stream_of(stream_id).windows_said])

    @app.delete("/v1/streams/{stream_id}")
    def close(stream_id: str) -> dict:
        stream = stream_of(stream_id)
        hub.close(stream)
        return {"id": stream.id, "windows": len(stream.windows_said)}

    @app.websocket("/v1/ws")
    async def frames(websocket: WebSocket) -> None:
        await websocket.accept()
        try:
            authorize(key_of(websocket.headers, websocket.query_params))
            stream = hub.open("frames", websocket.query_params.get("query", ""))
        except (HTTPException, HubFull) as e:
            await websocket.send_json({"type": "error", "message": getattr(e, "detail", str(e))})
            await websocket.close()
            return
        inbox, _ = hub.subscribe(stream)
        await websocket.send_json({"type": "open", "id": stream.id})

        async def forward():
            while True:
                event = await asyncio.to_thread(_get, inbox)
                if event is not None:
                    await websocket.send_json(event)
                    if event["type"] == "end":
                        return

        sender = asyncio.create_task(forward())
        try:
            while True:
                message = await websocket.receive()
                if message["type"] == "websocket.disconnect":
                    break
                if message.get("bytes"):
                    try:
                        frame = _decode_jpeg(message["bytes"])
                    except ValueError as e:
                        await websocket.send_json({"type": "error", "message": str(e)})
                        continue
                    await asyncio.to_thread(hub.add_frame, stream, frame)
                elif message.get("text"):
                    body = json.loads(message["text"])
                    if body.get("type") == "ask" and str(body.get("text", "")).strip():
                        hub.ask(stream, str(body["text"]))
        except WebSocketDisconnect:
            pass
        finally:  # a viewer that leaves frees its stream's pages at once
            hub.close(stream)
            sender.cancel()

    return app


def _get(inbox: queue.Queue):
    try:
        return inbox.get(timeout=0.5)
    except queue.Empty:
        return None


def _save_upload(file: UploadFile, hub: Hub, limit: int) -> Path:
    """Write an upload under a server-chosen name, refusing it past ``limit`` bytes."""
    path = hub.upload_dir / hub.new_upload_name(Path(file.filename or "").suffix)
    size = 0
    with open(path, "wb") as out:
        while chunk := file.file.read(UPLOAD_CHUNK):
            size += len(chunk)
            if size > limit:
                out.close()
                path.unlink(missing_ok=True)
                raise HTTPException(413, f"upload larger than the {limit >> 20} MiB limit")
            out.write(chunk)
    return path


def _probe(location: str) -> None:
    """Open the source and read its first frame, or raise VideoError saying why."""
    import av

    try:
        with av.open(location, timeout=10.0) as container:
            if not container.streams.video:
                raise VideoError(f"{location}: no video stream")
            next(container.decode(video=0))
    except (av.error.FFmpegError, OSError, StopIteration) as e:
        raise VideoError(f"{location}: not a readable video ({type(e).__name__})") from e


def _decode_jpeg(data: bytes) -> torch.Tensor:
    try:
        image = Image.open(io.BytesIO(data)).convert("RGB")
    except Exception as e:  # PIL raises many kinds for bad bytes
        raise ValueError(f"a frame that is not an image ({type(e).__name__})") from e
    return torch.from_numpy(np.asarray(image).copy())
