"""``livecc serve``: live commentary in the browser and over an HTTP API, on one streaming engine.

    GET  /                          the page (plain HTML and JS from the package; nothing fetched outside)
    POST /v1/streams                a stream from an upload (multipart ``file``) or a URL (JSON ``url``),
                                    with an optional ``query``  -> {"id": ...}
    GET  /v1/streams/{id}/events    its commentary as server-sent events {type, start, end, text, latency_ms}
    POST /v1/streams/{id}/ask       a question for its next window (JSON ``text``)
    GET  /v1/streams/{id}/vtt       its commentary so far as WebVTT
    DELETE /v1/streams/{id}         close it (its KV pages are freed at the engine's next round)
    WS   /v1/ws                     frames in (JPEG, 2 per second), questions and the end in, commentary and
                                    errors out
    GET  /v1/health, /v1/metrics

Every request and WebSocket must name an allowed host in its ``Host`` header (an IP address,
``localhost``, or a name given with ``allowed_hosts``), checked before anything else, so a page on
a name an attacker rebinds to this machine cannot reach it. With an API key every ``/v1`` request
but health must carry it (``Authorization: Bearer KEY``, or ``?key=KEY``, which the page uses). A
request that changes anything, and every WebSocket, must come from the page's own origin (scheme,
host and port) or one of ``allowed_origins`` when it names one (browsers always do), so another
web site cannot drive the server through a visitor's browser. A stream's slot is taken before its
body is read (a refused upload costs no disk); bodies are read with limits and refused while
reading; text must be well-formed Unicode and JSON no deeper than Python parses; uploads are
written under server-chosen names and deleted with their stream; URLs pass
:class:`~.sources.SourcePolicy`. Nothing that waits (decoding frames, tokenizing a question,
opening a source) runs on the event loop, and nothing on it waits for the engine.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import secrets
from concurrent.futures import ThreadPoolExecutor
from importlib import resources

from fastapi import FastAPI, HTTPException, Request, WebSocket, WebSocketDisconnect
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response, StreamingResponse

from .fanout import TooManyViewers
from .hub import Hub
from .served import HubFull, ServedStream
from .sources import FILE_OPTIONS, Location, SourceError, SourcePolicy, decode_frame, probe
from .uploads import parse_json, read_json, receive_upload
from .vtt import vtt_text

__all__ = ["create_app"]

CHANGES = ("POST", "PUT", "PATCH", "DELETE")
FAVICON = ('<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 16 16"><rect width="16" height="16" rx="3" '
           'fill="#1d1d1d"/><path d="M5 4l7 4-7 4z" fill="#8ab4f8"/></svg>')


def allowed_host(host: str, names: tuple[str, ...]) -> bool:
    """Whether a ``Host`` header names this server: an IP address or ``localhost`` (no page on a
    rebound name can be either), or one of ``names``."""
    name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
    name = name.strip("[]").lower()
    if name == "localhost" or name in names:
        return True
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


async def _in_thread(fn, *args, undo=None, **kwargs):
    """``fn(*args, **kwargs)`` on a thread (the hub may wait on its engine or its replicas); when the
    request is cancelled meanwhile, ``undo`` takes back what the call made once it is made."""
    task = asyncio.ensure_future(asyncio.to_thread(fn, *args, **kwargs))
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        if undo is not None:
            task.add_done_callback(lambda t: t.cancelled() or t.exception() is not None or undo(t.result()))
        raise


def create_app(hub: Hub, *, api_key: str | None = None, max_upload_bytes: int = 512 << 20, realtime: bool = True,
               policy: SourcePolicy | None = None, allowed_origins: tuple[str, ...] = (),
               allowed_hosts: tuple[str, ...] = (), url_probes: int = 4) -> FastAPI:
    """The ASGI app over ``hub``. ``realtime=False`` reads uploads and URLs as fast as the engine
    goes (tests, batch use); ``url_probes`` URL sources are opened at once, on threads of their
    own (a silent URL holds one for its timeout, never the threads uploads use)."""
    if api_key is not None and not api_key:
        raise ValueError("an empty API key would let anyone in: give a key, or none for a server on this machine")
    probes = ThreadPoolExecutor(url_probes, thread_name_prefix="livecc-url-probe")
    probing = asyncio.Semaphore(url_probes)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        yield
        probes.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(title="livecc", version="0.1.0", lifespan=lifespan)
    page = resources.files("livecc.serve").joinpath("static/index.html").read_text()
    policy = policy or SourcePolicy()

    def authorized(request_key: str | None) -> bool:
        return not api_key or bool(request_key and secrets.compare_digest(request_key, api_key))

    def key_of(headers, params) -> str | None:
        auth = headers.get("authorization", "")
        return auth.removeprefix("Bearer ").strip() if auth.startswith("Bearer ") else params.get("key")

    hosts = tuple(h.lower() for h in allowed_hosts)

    def same_origin(headers) -> bool:
        origin = headers.get("origin")
        if origin is None:  # not a browser's cross-site request: browsers name the origin of those
            return True
        return origin in allowed_origins or origin == f"http://{headers.get('host', '')}"

    @app.middleware("http")
    async def guard(request: Request, call_next):
        path = request.url.path
        if not allowed_host(request.headers.get("host", ""), hosts):
            return JSONResponse({"detail": "this server does not answer to that Host"}, status_code=421)
        if request.method in CHANGES and not same_origin(request.headers):
            return JSONResponse({"detail": "cross-site request refused (origin not allowed)"}, status_code=403)
        if path.startswith("/v1/") and path != "/v1/health" and not authorized(
                key_of(request.headers, request.query_params)):
            return JSONResponse({"detail": "missing or wrong API key"}, status_code=401)
        return await call_next(request)

    def stream_of(stream_id: str) -> ServedStream:
        stream = hub.get(stream_id)
        if stream is None:
            raise HTTPException(404, f"no stream {stream_id!r}")
        return stream

    @app.get("/", response_class=HTMLResponse)
    async def index() -> str:
        return page

    @app.get("/favicon.ico")
    async def favicon() -> Response:
        return Response(FAVICON, media_type="image/svg+xml")

    @app.get("/v1/health")
    async def health() -> dict:
        return {"status": "ok", **await asyncio.to_thread(hub.health)}

    @app.get("/v1/metrics")
    async def metrics() -> dict:
        return await asyncio.to_thread(hub.metrics)

    @app.post("/v1/streams", status_code=201)
    async def create(request: Request) -> dict:
        slot = await _reserve()  # before a byte of the body is read
        try:
            if request.headers.get("content-type", "").startswith("multipart/form-data"):
                return await _from_upload(request, slot)
            return await _from_url(request, slot)
        finally:
            slot.release()  # unless the stream took it over

    async def _from_url(request: Request, slot) -> dict:
        body = await read_json(request)
        url, query = body.get("url"), body.get("query", "")
        if not isinstance(url, str) or not isinstance(query, str):
            raise HTTPException(400, "give a url (text) and optionally a query (text), or upload a file")
        if probing.locked():
            raise HTTPException(429, "too many URL sources are being opened at once; try again")
        async with probing:
            loop = asyncio.get_running_loop()
            try:
                location = await loop.run_in_executor(probes, policy.check, url)
                await loop.run_in_executor(probes, lambda: probe(location))
            except SourceError as e:
                raise HTTPException(400, str(e)) from e
        stream = await _open(slot, "url", query)
        await _read(stream, location)
        return {"id": stream.id, "events": f"/v1/streams/{stream.id}/events"}

    async def _from_upload(request: Request, slot) -> dict:
        path = hub.new_upload(".upload")
        fields = await receive_upload(request, path, max_upload_bytes)
        location = Location(str(path), dict(FILE_OPTIONS))
        try:
            await asyncio.to_thread(probe, location)
            stream = await _open(slot, "upload", fields.get("query", ""), upload=path)
        except BaseException as e:
            path.unlink(missing_ok=True)
            if isinstance(e, SourceError):
                raise HTTPException(400, str(e)) from e
            raise
        await _read(stream, location)
        return {"id": stream.id, "events": f"/v1/streams/{stream.id}/events"}

    async def _reserve():
        try:
            return await _in_thread(hub.reserve, undo=lambda slot: slot.release())
        except HubFull as e:
            raise HTTPException(429, str(e)) from e

    async def _open(slot, source: str, query: str, upload=None) -> ServedStream:
        try:
            return await _in_thread(hub.open, slot, source, query, upload=upload, undo=hub.close)
        except ValueError as e:
            raise HTTPException(400, str(e)) from e

    async def _read(stream, location) -> None:
        await _in_thread(lambda: hub.read(stream, location, realtime=realtime), undo=lambda _: hub.close(stream))

    @app.get("/v1/streams/{stream_id}/events")
    async def events(stream_id: str, request: Request) -> Response:
        stream = stream_of(stream_id)
        if stream.closed and request.headers.get("last-event-id") is not None:
            return Response(status_code=204)  # an EventSource reconnecting after the end: it stops on 204
        try:
            viewer, missed = stream.viewers.subscribe(asyncio.get_running_loop())
        except TooManyViewers as e:
            raise HTTPException(429, str(e)) from e

        async def sse():
            try:
                count = 0
                for event in missed:
                    count += 1
                    yield f"id: {count}\ndata: {json.dumps(event)}\n\n"
                    if event["type"] == "end":
                        return
                while True:
                    try:
                        event = await asyncio.wait_for(viewer.queue.get(), timeout=15)
                    except asyncio.TimeoutError:
                        yield ": keep-alive\n\n"
                        continue
                    count += 1
                    yield f"id: {count}\ndata: {json.dumps(event)}\n\n"
                    if event["type"] == "end":
                        return
            finally:
                stream.viewers.unsubscribe(viewer)

        return StreamingResponse(sse(), media_type="text/event-stream")

    @app.post("/v1/streams/{stream_id}/ask")
    async def ask(stream_id: str, request: Request) -> dict:
        if not request.headers.get("content-type", "").startswith("application/json"):
            raise HTTPException(415, "ask with a JSON body {\"text\": ...}")
        stream = stream_of(stream_id)
        body = await read_json(request)
        try:
            return {"asked": await asyncio.to_thread(hub.ask, stream, body.get("text"))}
        except ValueError as e:
            raise HTTPException(400, str(e)) from e

    @app.get("/v1/streams/{stream_id}/vtt", response_class=PlainTextResponse)
    async def vtt(stream_id: str) -> str:
        return vtt_text([(e["start"], e["end"], e["text"]) for e in stream_of(stream_id).viewers.said])

    @app.delete("/v1/streams/{stream_id}")
    async def close(stream_id: str) -> dict:
        stream = stream_of(stream_id)
        hub.close(stream)
        return {"id": stream.id, "windows": len(stream.viewers.said)}

    @app.websocket("/v1/ws")
    async def frames(websocket: WebSocket) -> None:
        await websocket.accept()
        refusal = None
        if not allowed_host(websocket.headers.get("host", ""), hosts):
            refusal = "this server does not answer to that Host"
        elif not same_origin(websocket.headers):
            refusal = "cross-site WebSocket refused (origin not allowed)"
        elif not authorized(key_of(websocket.headers, websocket.query_params)):
            refusal = "missing or wrong API key"
        if refusal is None:
            try:
                slot = await _in_thread(hub.reserve, undo=lambda slot: slot.release())
                stream = await _in_thread(hub.open, slot, "frames", websocket.query_params.get("query", ""),
                                          undo=hub.close)
            except (HubFull, ValueError) as e:
                refusal = str(e)
        if refusal is not None:
            await websocket.send_json({"type": "error", "message": refusal})
            await websocket.close(code=1008)
            return
        viewer, _ = stream.viewers.subscribe(asyncio.get_running_loop())
        await websocket.send_json({"type": "open", "id": stream.id})

        async def forward():
            while True:
                event = await viewer.queue.get()
                await websocket.send_json(event)
                if event["type"] == "end":
                    return

        sender = asyncio.create_task(forward())
        try:
            while True:
                message = await websocket.receive()
                if message["type"] == "websocket.disconnect":
                    break
                try:
                    if message.get("bytes"):
                        if not hub.take_frame(stream):  # past the frame rate: dropped undecoded, the sender not
                            await asyncio.sleep(hub.frame_wait(stream))  # read until its allowance has a frame
                            continue
                        frame = await asyncio.to_thread(decode_frame, message["bytes"])
                        hub.add_frame(stream, frame)
                    elif message.get("text"):
                        await _message(stream, message["text"])
                except (SourceError, ValueError) as e:  # the sender's mistake: said to it, the stream goes on
                    await websocket.send_json({"type": "error", "message": str(e)})
        except WebSocketDisconnect:
            pass
        finally:  # a viewer that leaves ends its stream: its pages go back at the next round
            stream.viewers.unsubscribe(viewer)
            hub.close(stream)
            sender.cancel()

    async def _message(stream: ServedStream, text: str) -> None:
        body = parse_json(text, "a text message")
        kind = body.get("type")
        if kind == "end":  # no more frames: the windows sent are said, then the stream ends
            hub.finish(stream)
        elif kind == "ask":
            await asyncio.to_thread(hub.ask, stream, body.get("text"))
        else:
            raise ValueError("a text message is {\"type\": \"ask\", \"text\": ...} or {\"type\": \"end\"}")

    return app
