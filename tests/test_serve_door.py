"""``livecc serve`` at its door, probed as an attacker would (a real server on 127.0.0.1): the Host it
answers to, admission before a byte of a body, slots held until a stream's resources are gone,
malformed text refused without a 500, redirects not followed, loopback in every spelling refused,
idle streams closed, and a flooding client costing only itself."""

import http.client
import http.server
import json
import threading
import time

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from test_serve import Server, clip, events, jpeg, post_json, request, until, upload, upload_when_admitted  # noqa: E402, F401

from livecc.serve.sources import URL_ERROR, SourcePolicy, is_public  # noqa: E402

REBOUND = "rebind.evil.example"


def raw(port, method, path, headers, body=b""):
    """``(status, JSON or text)`` of one request with exactly these headers (Host included)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    conn.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
    for name, value in {**headers, "Content-Length": str(len(body))}.items():
        conn.putheader(name, value)
    conn.endheaders(body)
    response = conn.getresponse()
    text = response.read().decode()
    conn.close()
    try:
        return response.status, json.loads(text)
    except json.JSONDecodeError:
        return response.status, text


def websocket_as(port, host) -> tuple[str, str]:
    """The first message a WebSocket to ``/v1/ws`` sent with exactly this Host gets, and what the
    next frame is ("close" for a close frame)."""
    import base64
    import os
    import socket

    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        key = base64.b64encode(os.urandom(16)).decode()
        sock.sendall(f"GET /v1/ws HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                     f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode())
        data = b""
        while b"\r\n\r\n" not in data:
            data += sock.recv(4096)
        assert data.startswith(b"HTTP/1.1 101"), data
        data = data.split(b"\r\n\r\n", 1)[1]

        def frame():
            nonlocal data
            while len(data) < 2 or len(data) < 2 + (data[1] & 0x7F):
                data += sock.recv(4096)
            opcode, size = data[0] & 0x0F, data[1] & 0x7F
            payload, data = data[2 : 2 + size], data[2 + size :]
            return "close" if opcode == 8 else payload.decode()

        return frame(), frame()


def test_a_rebound_name_and_another_scheme_are_refused(processor, tmp_path, clip):  # noqa: F811
    """1: a page on a name rebound to this machine is same-origin to itself, but the Host it sends
    is not one the server answers to, over HTTP and WebSocket alike (an error message, then a close
    frame); an origin of another scheme is another origin. Names given with ``allowed_hosts`` are
    answered."""
    with Server(processor, tmp_path) as server:
        p = server.port
        rebound = {"Host": f"{REBOUND}:{p}", "Origin": f"http://{REBOUND}:{p}"}
        assert raw(p, "GET", "/v1/metrics", rebound)[0] == 421
        assert raw(p, "POST", "/v1/streams", {**rebound, "Content-Type": "application/json"},
                   b'{"url": "http://example.com/a.ts"}')[0] == 421
        first, then = websocket_as(p, f"{REBOUND}:{p}")
        assert "does not answer to that Host" in json.loads(first)["message"] and then == "close"
        other_scheme = {"Origin": f"https://127.0.0.1:{p}"}
        assert upload(server.url, clip, headers=other_scheme)[0] == 403
        assert raw(p, "GET", "/v1/health", {"Host": f"localhost:{p}"})[0] == 200
        assert raw(p, "GET", "/v1/health", {"Host": f"[::1]:{p}"})[0] == 200
    with Server(processor, tmp_path, allowed_hosts=(REBOUND,)) as server:
        assert raw(server.port, "GET", "/v1/health", {"Host": f"{REBOUND}:{server.port}"})[0] == 200


def test_a_refused_upload_costs_no_disk(processor, tmp_path):
    """2: with the one slot held, a 4.5 MB upload is refused (429) before its body is read: nothing
    is written, and the answer comes while the body is still being sent."""
    from websockets.sync.client import connect

    with Server(processor, tmp_path, max_streams=1, upload_mb=5) as server, \
            connect(f"ws://127.0.0.1:{server.port}/v1/ws") as holder:
        assert json.loads(holder.recv())["type"] == "open"
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
        conn.putrequest("POST", "/v1/streams")
        conn.putheader("Content-Type", "multipart/form-data; boundary=b")
        conn.putheader("Content-Length", str(9 << 19))
        conn.endheaders()
        conn.send(b"--b\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.mp4\"\r\n\r\n")
        response = conn.getresponse()  # before the other 4.5 MB are sent
        assert response.status == 429 and "at most 1 streams" in response.read().decode()
        conn.close()
        assert not list((tmp_path / "uploads").iterdir())


def test_a_closed_stream_holds_its_slot_until_its_reader_ends(processor, tmp_path, clip):  # noqa: F811
    """3: a deleted upload stream counts against the limit while its reader thread (and FFmpeg's
    decoders) live; after many create/delete cycles the threads are as many as before."""
    with Server(processor, tmp_path, max_streams=2, realtime=True) as server:
        threads = threading.active_count()
        for _ in range(20):
            made = upload_when_admitted(server.url, clip)
            assert request(f"{server.url}/v1/streams/{made['id']}", "DELETE")[0] == 200
            metrics = request(f"{server.url}/v1/metrics")[1]
            assert metrics["streams_holding_slots"] <= 2
        until(lambda: request(f"{server.url}/v1/metrics")[1]["streams_holding_slots"] == 0)
        until(lambda: threading.active_count() <= threads + 2)


@pytest.mark.parametrize("route, body", [
    ("/v1/streams", {"url": "http://[127.0.0.1]:8000/a.ts"}),
    ("/v1/streams", {"url": "http://example.com:99999/a.ts"}),
    ("/v1/streams", {"url": "http://127.0.0.1/a.ts", "query": "hi \ud800"}),
    ("/v1/streams", "[" * 30_000),
    ("ask", {"text": "hi \ud800"}),
    ("ask", "[" * 30_000 + "]" * 30_000),
    ("ask", {"text": ["not", "text"]}),
])
def test_malformed_text_gets_400_never_500(processor, tmp_path, clip, route, body):  # noqa: F811
    """4: lone surrogates, JSON nested past the parser, malformed URL authorities: every route
    answers 4xx naming what is wrong."""
    with Server(processor, tmp_path, allow_private=True) as server:
        status, made = upload(server.url, clip)
        path = f"/v1/streams/{made['id']}/ask" if route == "ask" else route
        data = body if isinstance(body, str) else json.dumps(body)
        answer = request(f"{server.url}{path}", "POST", data.encode(), {"Content-Type": "application/json"})
        assert 400 <= answer[0] < 500, answer
        events(server.url, made["id"])


def test_malformed_messages_over_a_websocket_are_answered_and_the_stream_goes_on(processor, tmp_path):
    """4: the same inputs over the WebSocket: an error message each, and the connection and its
    stream stay."""
    from websockets.sync.client import connect

    with Server(processor, tmp_path) as server, connect(f"ws://127.0.0.1:{server.port}/v1/ws") as ws:
        assert json.loads(ws.recv())["type"] == "open"
        for message in (json.dumps({"type": "ask", "text": "hi \ud800"}), "[" * 100_000, '{"type": 5}'):
            ws.send(message)
            assert json.loads(ws.recv(timeout=30))["type"] == "error"
        ws.send(json.dumps({"type": "ask", "text": "still here?"}))
        assert json.loads(ws.recv(timeout=30)) == {"type": "asked", "text": "still here?"}


class Redirecting(http.server.BaseHTTPRequestHandler):
    target = ""

    def do_GET(self):  # noqa: N802
        self.send_response(302)
        self.send_header("Location", self.target)
        self.end_headers()

    def log_message(self, *args):
        pass


def test_a_redirect_is_not_followed(processor, tmp_path, clip):  # noqa: F811
    """5: a URL that redirects (here from one loopback port to another serving a real video, on a
    server trusting its network) is not followed: the stream is refused, and the target is never
    asked for anything."""
    asked = []

    class Serving(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            asked.append(self.path)
            self.send_response(200)
            self.send_header("Content-Type", "video/mp4")
            self.end_headers()
            self.wfile.write(clip)

        def log_message(self, *args):
            pass

    target = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Serving)
    Redirecting.target = f"http://127.0.0.1:{target.server_address[1]}/clip.mp4"
    redirecting = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Redirecting)
    for s in (target, redirecting):
        threading.Thread(target=s.serve_forever, daemon=True).start()
    try:
        with Server(processor, tmp_path, allow_private=True) as server:
            direct = post_json(server.url, "/v1/streams", {"url": Redirecting.target})
            assert direct[0] == 201  # the target itself is readable
            events(server.url, direct[1]["id"])
            asked.clear()
            answer = post_json(server.url, "/v1/streams", {"url": f"http://127.0.0.1:{redirecting.server_address[1]}/"})
            assert answer == (400, {"detail": URL_ERROR}) and not asked
    finally:
        for s in (target, redirecting):
            s.shutdown()


def test_loopback_in_every_spelling_is_not_public():
    """6: IPv6 forms that carry an IPv4 address are judged by it, and the ranges Python's
    ``is_global`` lets through are not public either; a name resolving to one is refused."""
    for address in ("64:ff9b::7f00:1", "::7f00:1", "2002:7f00:1::", "192.0.0.8", "::ffff:127.0.0.1",
                    "64:ff9b:1::808:808", "2001:0:4136:e378:8000:63bf:80ff:fffe", "::ffff:10.0.0.1", "100.64.0.1"):
        assert not is_public(address), address
    for address in ("8.8.8.8", "2606:4700::1111", "64:ff9b::808:808", "2002:808:808::"):
        assert is_public(address), address
    for url in ("http://[64:ff9b::7f00:1]/a.ts", "http://[::7f00:1]/", "http://[2002:7f00:1::]/", "http://192.0.0.8/"):
        with pytest.raises(ValueError, match=URL_ERROR):
            SourcePolicy().check(url)


def test_the_checked_address_is_the_one_read(monkeypatch):
    """5, 6: FFmpeg is given the address that was checked, resolved once (the name kept as the Host
    and as the TLS name, so a name that resolves elsewhere a moment later reaches nothing new), and
    follows no redirect."""
    import socket

    answers = iter(["93.184.216.34", "127.0.0.1"])  # a rebinding resolver: public, then loopback
    monkeypatch.setattr(socket, "getaddrinfo", lambda host, port: [(2, 1, 6, "", (next(answers), port or 0))])
    checked = SourcePolicy().check("https://stream.example:8443/live.ts")
    assert checked.where == "https://93.184.216.34:8443/live.ts"
    assert checked.options["headers"] == "Host: stream.example:8443\r\n"
    assert checked.options["verifyhost"] == "stream.example" and checked.options["max_redirects"] == "0"


def test_an_idle_websocket_frees_its_slot(processor, tmp_path):
    """7: a WebSocket that sends no frame is closed after the idle time, with an event saying why,
    and its slot goes to the next stream."""
    from websockets.sync.client import connect

    with Server(processor, tmp_path, max_streams=1, idle_s=1.0) as server:
        base = f"ws://127.0.0.1:{server.port}/v1/ws"
        with connect(base) as idle:
            assert json.loads(idle.recv())["type"] == "open"
            with connect(base) as refused:
                assert "at most 1 streams" in json.loads(refused.recv())["message"]
            error = json.loads(idle.recv(timeout=30))
            assert error["type"] == "error" and "no frames for 1 s" in error["message"]
            assert json.loads(idle.recv(timeout=30))["type"] == "end"
        until(lambda: request(f"{server.url}/v1/metrics")[1]["streams_holding_slots"] == 0)
        with connect(base) as next_one:
            assert json.loads(next_one.recv())["type"] == "open"


FLOOD = """
import sys, time
from websockets.sync.client import connect
frame = open(sys.argv[2], "rb").read()
with connect(sys.argv[1]) as ws:
    ws.recv()
    end = time.monotonic() + float(sys.argv[3])
    while time.monotonic() < end:
        ws.send(frame)
"""


def test_a_flooding_client_costs_only_itself(processor, tmp_path):
    """8: a client (a process of its own) sending frames as fast as it can has those past its
    stream's frame rate dropped undecoded and counted for it alone, and is read no faster than that
    rate (its socket holds the rest back); its neighbour keeps every window
    within one window of real time; frames that are not 8-bit JPEG or PNG are refused; the metrics
    say who keeps real time."""
    import io
    import subprocess
    import sys

    import numpy as np
    from PIL import Image
    from websockets.sync.client import connect

    def encoded(fmt, mode="RGB"):
        buffer = io.BytesIO()
        Image.fromarray(np.zeros((56, 56, 3), dtype=np.uint8)).convert(mode).save(buffer, format=fmt)
        return buffer.getvalue()

    (tmp_path / "frame.jpg").write_bytes(jpeg(10))
    with Server(processor, tmp_path) as server:
        base = f"ws://127.0.0.1:{server.port}/v1/ws"
        with connect(base) as victim:
            assert json.loads(victim.recv())["type"] == "open"
            for frame in (encoded("TIFF"), encoded("BMP"), encoded("JPEG", "CMYK")):
                victim.send(frame)
                assert json.loads(victim.recv(timeout=30))["type"] == "error"
            flooder = subprocess.Popen([sys.executable, "-c", FLOOD, base, str(tmp_path / "frame.jpg"), "12"])
            until(lambda: request(f"{server.url}/v1/metrics")[1]["active_streams"] == 2)
            time.sleep(2)  # the frame allowance the refused frames took comes back; the flood is on
            said, t0 = [], time.monotonic()
            for i in range(10):  # 5 s at 2 FPS
                time.sleep(max(0.0, t0 + i / 2 - time.monotonic()))
                victim.send(jpeg(20 * i))
            while len(said) < 3:
                event = json.loads(victim.recv(timeout=30))
                said += [event] if event["type"] == "window" else []
            metrics = request(f"{server.url}/v1/metrics")[1]
            flooder.kill()  # held back by its socket, it would take minutes to send what it has queued
            flooder.wait(30)
        flooded = next(s for s in metrics["streams"] if s["dropped_frames"] > 0)
        neighbour = next(s for s in metrics["streams"] if s["id"] != flooded["id"])
        # past its allowance the flooder is read at its frame rate: a frame dropped each time it is read early
        assert 5 < flooded["dropped_frames"] <= 2 * 12 * 2 + 10 and neighbour["dropped_frames"] == 0
        assert [(e["start"], e["end"]) for e in said] == [(0.0, 3.0), (3.0, 4.0), (4.0, 5.0)]
        assert neighbour["drop_ratio"] == 0 and neighbour["lag_s"] <= 1.0 and "holds_real_time" in metrics
