"""``livecc serve`` with a real server on 127.0.0.1 and the tiny model, used as a stranger would and
probed as an attacker would: concurrent streams, isolation of one client's bad input, a server
that stays responsive under load, limits that limit while reading, no reaching into the server's
network, no cross-site use, and nothing left behind."""

import asyncio
import http.client
import io
import json
import os
import socket
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch

pytest.importorskip("fastapi")
uvicorn = pytest.importorskip("uvicorn")

from livecc.data.synth import write_video  # noqa: E402
from livecc.models import tiny_qwen_vl  # noqa: E402
from livecc.serve import Hub, create_app  # noqa: E402
from livecc.serve.sources import URL_ERROR, SourcePolicy  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """The app on a free loopback port, in a thread."""

    def __init__(self, processor, tmp, *, max_streams=8, api_key=None, upload_mb=2, upload_dir="uploads",
                 grace_s=60.0, max_viewers=16, allow_private=False, realtime=False, allowed_hosts=(), idle_s=30.0):
        self.hub = Hub(tiny_qwen_vl(seed=0), processor, max_streams=max_streams, idle_s=idle_s,
                       upload_dir=tmp / upload_dir if upload_dir else None, grace_s=grace_s, max_viewers=max_viewers)
        app = create_app(self.hub, api_key=api_key, max_upload_bytes=upload_mb << 20, realtime=realtime,
                         policy=SourcePolicy(allow_private=allow_private), allowed_hosts=allowed_hosts)
        self.port = free_port()
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.url = f"http://127.0.0.1:{self.port}"

    def __enter__(self):
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        for _ in range(200):
            if self.server.started:
                return self
            time.sleep(0.05)
        raise RuntimeError("server did not start")

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(10)
        self.hub.shutdown()


def request(url, method="GET", body=None, headers=None, timeout=60):
    """``(status, parsed JSON or text)`` of one request."""
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as response:
            text, status = response.read().decode(), response.status
    except urllib.error.HTTPError as e:
        text, status = e.read().decode(), e.code
    try:
        return status, json.loads(text)
    except json.JSONDecodeError:
        return status, text


def post_json(base, path, value, headers=None):
    return request(f"{base}{path}", "POST", json.dumps(value).encode(),
                   {"Content-Type": "application/json", **(headers or {})})


def upload(base, data: bytes, filename="clip.mp4", query="", headers=None):
    boundary = "livecc-test-boundary"
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="query"\r\n\r\n{query}\r\n'.encode(),
             (f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{filename}"\r\n'
              "Content-Type: application/octet-stream\r\n\r\n").encode() + data + b"\r\n",
             f"--{boundary}--\r\n".encode()]
    return request(f"{base}/v1/streams", "POST", b"".join(parts),
                   {"Content-Type": f"multipart/form-data; boundary={boundary}", **(headers or {})})


def upload_when_admitted(base, data: bytes) -> dict:
    """An upload stream, asked for again while the server is full: a closed stream holds its slot
    until its reader has ended."""
    status, made = upload(base, data)
    while status == 429:
        time.sleep(0.01)
        status, made = upload(base, data)
    assert status == 201, made
    return made


def events(base, stream_id, headers=None):
    """Every event of a stream's server-sent events until its end."""
    req = urllib.request.Request(f"{base}/v1/streams/{stream_id}/events", headers=headers or {})
    out = []
    with urllib.request.urlopen(req, timeout=120) as response:
        for line in response:
            if line.startswith(b"data: "):
                out.append(json.loads(line[6:]))
                if out[-1]["type"] == "end":
                    return out
    return out


def jpeg(value: int, size=(56, 56)) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.full((*size, 3), value, dtype=np.uint8)).save(buffer, format="JPEG")
    return buffer.getvalue()


def until(condition, seconds=30.0):
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.05)


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    path = tmp_path_factory.mktemp("serve") / "clip.mp4"
    write_video(path, [], 5.0, fps=10, size=(56, 56))  # 10 frames at 2 FPS: windows of 6, 2 and 2
    return path.read_bytes()


def test_eight_concurrent_streams_each_receive_every_window(processor, tmp_path, clip):
    with Server(processor, tmp_path) as server:
        baseline = request(f"{server.url}/v1/metrics")[1]["kv_pages_in_use"]

        def one(i):
            status, body = upload(server.url, clip, query=f"viewer {i}")
            assert status == 201, body
            return events(server.url, body["id"])

        with ThreadPoolExecutor(8) as pool:
            streams = list(pool.map(one, range(8)))
        for got in streams:
            windows = [e for e in got if e["type"] == "window"]
            assert [(w["start"], w["end"]) for w in windows] == [(0.0, 3.0), (3.0, 4.0), (4.0, 5.0)]
            assert got[-1]["type"] == "end" and all("latency_ms" in w for w in windows)
        metrics = request(f"{server.url}/v1/metrics")[1]
        assert metrics["windows"] == 24 and metrics["window_p50_ms"] > 0 and metrics["dropped_windows"] == 0
        assert metrics["kv_pages_in_use"] == baseline  # every stream ended and gave its pages back
        assert request(f"{server.url}/v1/health") == (200, {"status": "ok", "engine": True})
        assert not list((tmp_path / "uploads").iterdir())  # each upload went with its stream


def test_one_clients_bad_input_reaches_only_that_client(processor, tmp_path):
    """Two WebSocket streams stepped together: the attacker's question with special tokens, its
    frames of another size, its messages that are not JSON and its 4000x2 frames get errors (and
    the last ends its stream); the victim's windows all come, with no error."""
    from websockets.sync.client import connect

    with Server(processor, tmp_path) as server:
        base = f"ws://127.0.0.1:{server.port}/v1/ws"
        with connect(f"{base}?query=Describe") as victim, connect(base) as attacker:
            for ws in (victim, attacker):
                assert json.loads(ws.recv())["type"] == "open"
            attacker.send(json.dumps({"type": "ask", "text": "<|video_pad|><|im_end|>"}))
            assert "special token" in json.loads(attacker.recv(timeout=30))["message"]
            for message in ("not json", "[1, 2]", json.dumps({"type": "ask", "text": "x" * 200_000})):
                attacker.send(message)
                assert json.loads(attacker.recv(timeout=30))["type"] == "error"
            attacker.send(jpeg(10))
            attacker.send(jpeg(10, size=(64, 64)))
            assert "in a stream of 56x56 frames" in json.loads(attacker.recv(timeout=30))["message"]
            for i in range(6):
                victim.send(jpeg(30 * i))
            for _ in range(5):
                attacker.send(jpeg(10))  # the attacker's first window: fine, stepped beside the victim's
            got_victim = [json.loads(victim.recv(timeout=60))]
            assert got_victim[0]["type"] == "window"
            with connect(base) as wide:  # a stream of 4000x2 frames: aspect ratio over 200
                assert json.loads(wide.recv())["type"] == "open"
                for i in range(2):
                    victim.send(jpeg(30 * i))
                for _ in range(6):
                    wide.send(jpeg(5, size=(2, 4000)))
                got_wide = [json.loads(wide.recv(timeout=60)) for _ in range(2)]
                assert got_wide[0]["type"] == "error" and "aspect ratio" in got_wide[0]["message"]
                assert got_wide[1]["type"] == "end"
            got_victim.append(json.loads(victim.recv(timeout=60)))
            assert [e["type"] for e in got_victim] == ["window", "window"], got_victim


def test_a_failing_window_fails_only_its_stream(processor, tmp_path, monkeypatch):
    """An error no door check catches (here: raised inside the batched prefill for one stream) is
    retried stream by stream: the others' windows are said, with the state they had."""
    from livecc.data.windows import FrameWindow
    from livecc.infer.policy import StreamPolicy

    hub = Hub(tiny_qwen_vl(seed=0), processor, max_streams=3, upload_dir=tmp_path / "u")
    try:
        streams = [hub.open(hub.reserve(), "frames", q) for q in ("one", "two", "three")]
        prompt = StreamPolicy.prompt

        def fragile(self, s, *args):
            if s is streams[1].state:
                raise RuntimeError("a fault in this stream's window")
            return prompt(self, s, *args)

        monkeypatch.setattr(StreamPolicy, "prompt", fragile)
        received = {s.id: [] for s in streams}
        loop = asyncio.new_event_loop()
        viewers = [s.viewers.subscribe(loop)[0] for s in streams]
        for s in streams:
            hub.enqueue(s, FrameWindow(torch.zeros(6, 56, 56, 3, dtype=torch.uint8), 0, 0.0, 3.0))
        until(lambda: streams[1].closed and all(s.viewers.said for s in (streams[0], streams[2])))
        loop.run_until_complete(asyncio.sleep(0.1))
        for s, viewer in zip(streams, viewers):
            while not viewer.queue.empty():
                received[s.id].append(viewer.queue.get_nowait()["type"])
        assert received[streams[0].id] == ["window"] == received[streams[2].id]
        assert received[streams[1].id] == ["error", "end"] and "a fault" in streams[1].error
        assert streams[0].state.window_index == 1 and streams[0].state.next_pos > 0
    finally:
        hub.shutdown()


def test_health_answers_fast_under_load(processor, tmp_path, clip):
    """While a long question, 50 idle SSE viewers and 4000x4000 frames arrive, health answers in
    under a second every time it is asked."""
    from websockets.sync.client import connect

    with Server(processor, tmp_path, max_viewers=64) as server:
        pages = request(f"{server.url}/v1/metrics")[1]["kv_pages"]
        status, body = upload(server.url, clip)
        assert status == 201
        stop = threading.Event()
        latencies = []

        def probe():
            while not stop.is_set():
                t0 = time.monotonic()
                assert request(f"{server.url}/v1/health", timeout=10)[0] == 200
                latencies.append(time.monotonic() - t0)
                time.sleep(0.05)

        def idle_viewer():
            conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
            conn.request("GET", f"/v1/streams/{body['id']}/events")
            conn.getresponse()  # headers only: it never reads the events
            stop.wait()
            conn.close()

        threads = [threading.Thread(target=probe, daemon=True)]
        threads += [threading.Thread(target=idle_viewer, daemon=True) for _ in range(50)]
        for t in threads:
            t.start()
        try:
            huge = jpeg(100, size=(4000, 4000))
            with connect(f"ws://127.0.0.1:{server.port}/v1/ws") as ws:
                assert json.loads(ws.recv())["type"] == "open"
                for _ in range(4):
                    ws.send(huge)
                    assert "larger than this server takes" in json.loads(ws.recv(timeout=30))["message"]
            ask = post_json(server.url, f"/v1/streams/{body['id']}/ask", {"text": "why " * 12_000})  # 48 KB
            assert ask[0] == 400 and "longer than" in ask[1]["detail"]
            time.sleep(2)
        finally:
            stop.set()
            for t in threads:
                t.join(60)
        assert len(latencies) > 10 and max(latencies) < 1.0, max(latencies)
        assert request(f"{server.url}/v1/metrics")[1]["kv_pages"] == pages  # nothing grew the pool


def test_an_upload_past_its_limit_is_refused_while_it_arrives(processor, tmp_path):
    """1.5 GB sent chunked against a 5 MB limit: refused long before it ends, never more than the
    limit on disk."""
    with Server(processor, tmp_path, upload_mb=5) as server:
        peak, stop = [0], threading.Event()

        def watch():
            while not stop.is_set():
                peak[0] = max(peak[0], sum(p.stat().st_size for p in (tmp_path / "uploads").iterdir()
                                           if p.exists()))
                time.sleep(0.01)

        watcher = threading.Thread(target=watch)
        watcher.start()
        boundary = "b"
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
        conn.putrequest("POST", "/v1/streams")
        conn.putheader("Content-Type", f"multipart/form-data; boundary={boundary}")
        conn.putheader("Transfer-Encoding", "chunked")
        conn.endheaders()
        head = (f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="big.mp4"\r\n\r\n').encode()
        sent, chunk, t0 = 0, b"\0" * (1 << 20), time.monotonic()
        try:
            conn.send(b"%x\r\n%s\r\n" % (len(head), head))
            while sent < 1500 << 20:
                conn.send(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                sent += len(chunk)
            conn.send(b"0\r\n\r\n")
        except OSError:  # the server answered and closed the connection
            pass
        status = conn.getresponse().status
        stop.set()
        watcher.join()
        assert status == 413 and sent < 200 << 20 and time.monotonic() - t0 < 60
        assert peak[0] <= 5 << 20 and not list((tmp_path / "uploads").iterdir())


def test_urls_into_the_servers_own_network_are_refused_alike(processor, tmp_path):
    """Loopback, private, link-local and IPv6 loopback addresses, an open port, a closed one and a
    silent one: the same 400 and the same words, and nothing connects to the open port."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    listener.settimeout(0.1)
    with Server(processor, tmp_path) as server:
        urls = [f"http://127.0.0.1:{listener.getsockname()[1]}/a.ts", f"http://127.0.0.1:{free_port()}/a.ts",
                f"http://localhost:{server.port}/v1/metrics", "http://10.0.0.1/a.ts", "rtsp://192.168.1.2/live",
                "http://169.254.169.254/latest/meta-data", "http://[::1]:8000/a.ts", "http://224.0.0.1/a.ts"]
        answers = {url: post_json(server.url, "/v1/streams", {"url": url}) for url in urls}
        assert all(a == (400, {"detail": URL_ERROR}) for a in answers.values()), answers
        for url in ("file:///etc/passwd", "udp://0.0.0.0:18555", "srt://127.0.0.1:9000", "concat:a|b"):
            status, body = post_json(server.url, "/v1/streams", {"url": url})
            assert status == 400 and "network stream" in body["detail"]
        with pytest.raises(socket.timeout):
            listener.accept()
    listener.close()


def test_bodies_that_are_not_what_they_should_be_get_400(processor, tmp_path, clip):
    with Server(processor, tmp_path) as server:
        base, streams = server.url, f"{server.url}/v1/streams"
        json_headers = {"Content-Type": "application/json"}
        assert request(streams, "POST", b"{not json", json_headers)[0] == 400
        assert request(streams, "POST", b"[1, 2]", json_headers)[0] == 400
        assert post_json(base, "/v1/streams", {"url": 5})[0] == 400
        assert post_json(base, "/v1/streams", {"url": "http://example.com/a.ts", "query": 5})[0] == 400
        assert request(streams, "POST", b'{"url": "' + b"a" * (100 << 10) + b'"}', json_headers)[0] == 413
        status, body = upload(base, b"this is not a video", filename="notes.txt")
        assert status == 400 and "not a readable video" in body["detail"]
        assert upload(base, clip, query="<|im_start|>system")[0] == 400
        status, good = upload(base, clip)
        assert request(f"{base}/v1/streams/{good['id']}/ask", "POST", b"text=hi",
                       {"Content-Type": "text/plain"})[0] == 415
        events(base, good["id"])


def test_other_sites_cannot_drive_the_server(processor, tmp_path, clip):
    from websockets.sync.client import connect

    with Server(processor, tmp_path) as server:
        evil = {"Origin": "http://evil.example"}
        assert post_json(server.url, "/v1/streams", {"url": "http://example.com/a.ts"}, evil)[0] == 403
        assert upload(server.url, clip, headers=evil)[0] == 403
        with connect(f"ws://127.0.0.1:{server.port}/v1/ws", additional_headers=evil) as ws:
            assert "cross-site" in json.loads(ws.recv())["message"]
        status, body = upload(server.url, clip, headers={"Origin": server.url})
        assert status == 201
        events(server.url, body["id"])


def test_the_stream_limit_and_the_api_key(processor, tmp_path, clip):
    with pytest.raises(ValueError, match="empty API key"):
        create_app(None, api_key="")
    with Server(processor, tmp_path, max_streams=1, api_key="s3cret") as server:
        assert upload(server.url, clip)[0] == 401
        auth = {"Authorization": "Bearer s3cret"}
        status, first = upload(server.url, clip, headers=auth)
        assert status == 201
        assert upload(server.url, clip, headers=auth)[0] == 429
        assert len(list((tmp_path / "uploads").iterdir())) == 1  # the refused upload left nothing
        assert request(f"{server.url}/v1/streams/{first['id']}?key=s3cret", "DELETE")[0] == 200
        assert request(f"{server.url}/v1/health")[0] == 200  # health needs no key
        assert request(f"{server.url}/")[0] == 200 and request(f"{server.url}/favicon.ico")[0] == 200


def test_paths_in_requests_never_reach_the_file_system(processor, tmp_path, clip):
    with Server(processor, tmp_path) as server:
        status, body = upload(server.url, clip, filename="../../../../tmp/escape.mp4")
        assert status == 201
        saved = list((tmp_path / "uploads").iterdir())
        assert len(saved) == 1 and saved[0].parent == tmp_path / "uploads" and "escape" not in saved[0].name
        assert not (tmp_path.parent / "escape.mp4").exists()
        for path in ("/v1/streams/..%2F..%2Fetc%2Fpasswd/vtt", "/static/../../etc/passwd", "/../../etc/passwd"):
            assert request(f"{server.url}{path}")[0] == 404
        events(server.url, body["id"])


def test_nothing_is_left_behind(processor, tmp_path, clip):
    """A closed stream ends for its viewers, then is forgotten (404); an EventSource reconnecting
    after the end is told to stop (204); 500 create/close cycles leave files, memory and
    descriptors as they were; a server's own upload directory goes with it."""
    def rss_mb():
        return int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20

    server = Server(processor, tmp_path, grace_s=0.5, upload_dir=None)
    with server:
        pages = request(f"{server.url}/v1/metrics")[1]["kv_pages_in_use"]
        status, body = upload(server.url, clip)
        got = events(server.url, body["id"])
        assert got[-1]["type"] == "end"
        req = urllib.request.Request(f"{server.url}/v1/streams/{body['id']}/events", headers={"Last-Event-ID": "4"})
        with urllib.request.urlopen(req, timeout=10) as response:
            assert response.status == 204
        until(lambda: request(f"{server.url}/v1/streams/{body['id']}/vtt")[0] == 404)

        def cycles(n):
            for _ in range(n):
                made = upload_when_admitted(server.url, clip)
                assert request(f"{server.url}/v1/streams/{made['id']}", "DELETE")[0] == 200

        cycles(50)  # warm: caches, pools and allocators at their working size
        until(lambda: request(f"{server.url}/v1/metrics")[1]["closed_streams"] == 0)
        files, fds, rss = len(list(server.hub.upload_dir.iterdir())), len(os.listdir("/proc/self/fd")), rss_mb()
        cycles(500)
        until(lambda: request(f"{server.url}/v1/metrics")[1]["closed_streams"] == 0)
        metrics = request(f"{server.url}/v1/metrics")[1]
        assert len(list(server.hub.upload_dir.iterdir())) == files == 0
        assert len(os.listdir("/proc/self/fd")) <= fds + 4 and rss_mb() < rss + 64, (fds, rss, rss_mb())
        assert metrics["kv_pages_in_use"] == pages and metrics["viewers"] == 0
        upload_dir = server.hub.upload_dir
    assert not upload_dir.exists()


def test_stream_writes_subtitles(processor, tmp_path, clip):
    from livecc.cli import main

    (tmp_path / "clip.mp4").write_bytes(clip)
    assert main(["stream", str(tmp_path / "clip.mp4"), "--model", "tiny", "--fast", "--vtt",
                 str(tmp_path / "out.vtt"), "--max-new-tokens", "3"]) == 0
    text = (tmp_path / "out.vtt").read_text()
    from livecc.data.words import parse_vtt

    assert text.startswith("WEBVTT\n\n") and isinstance(parse_vtt(text), list)
