"""``livecc serve`` with a real server on 127.0.0.1 and the tiny model: concurrent streams, freed
pages, bad uploads, refused paths and URLs, the stream limit, the API key and the subtitles."""

import io
import json
import socket
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

pytest.importorskip("fastapi")
uvicorn = pytest.importorskip("uvicorn")

from livecc.data.synth import write_video  # noqa: E402
from livecc.models import tiny_qwen2vl  # noqa: E402
from livecc.serve import Hub, create_app  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """The app on a free loopback port, in a thread."""

    def __init__(self, processor, tmp, *, max_streams=8, api_key=None):
        self.hub = Hub(tiny_qwen2vl(seed=0), processor, max_streams=max_streams, upload_dir=tmp / "uploads")
        app = create_app(self.hub, api_key=api_key, max_upload_bytes=2 << 20, realtime=False)
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


def request(url, method="GET", body=None, headers=None):
    """``(status, parsed JSON or text)`` of one request."""
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=60) as response:
            text = response.read().decode()
            status = response.status
    except urllib.error.HTTPError as e:
        text, status = e.read().decode(), e.code
    try:
        return status, json.loads(text)
    except json.JSONDecodeError:
        return status, text


def upload(base, data: bytes, filename="clip.mp4", query="", headers=None):
    boundary = "livecc-test-boundary"
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="query"\r\n\r\n{query}\r\n'.encode(),
             (f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{filename}"\r\n'
              "Content-Type: application/octet-stream\r\n\r\n").encode() + data + b"\r\n",
             f"--{boundary}--\r\n".encode()]
    return request(f"{base}/v1/streams", "POST", b"".join(parts),
                   {"Content-Type": f"multipart/form-data; boundary={boundary}", **(headers or {})})


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


def test_a_viewer_that_disconnects_frees_its_pages_at_once(processor, tmp_path):
    from PIL import Image
    from websockets.sync.client import connect

    with Server(processor, tmp_path) as server:
        baseline = request(f"{server.url}/v1/metrics")[1]["kv_pages_in_use"]
        with connect(f"ws://127.0.0.1:{server.port}/v1/ws?query=Describe") as ws:
            assert json.loads(ws.recv())["type"] == "open"
            for i in range(8):  # a first window of 6 frames, then one of 2
                buffer = io.BytesIO()
                Image.fromarray(np.full((56, 56, 3), 30 * i, dtype=np.uint8)).save(buffer, format="JPEG")
                ws.send(buffer.getvalue())
            ws.send(json.dumps({"type": "ask", "text": "Who leads?"}))
            ws.send(b"not a jpeg")
            got = [json.loads(ws.recv(timeout=60)) for _ in range(3)]
            assert {e["type"] for e in got} == {"window", "error"}
            assert request(f"{server.url}/v1/metrics")[1]["kv_pages_in_use"] > baseline
        for _ in range(100):
            if request(f"{server.url}/v1/metrics")[1]["kv_pages_in_use"] == baseline:
                break
            time.sleep(0.05)
        assert request(f"{server.url}/v1/metrics")[1]["kv_pages_in_use"] == baseline


def test_bad_input_gets_an_error_while_other_streams_go_on(processor, tmp_path, clip):
    with Server(processor, tmp_path, max_streams=2) as server:
        status, good = upload(server.url, clip)
        assert status == 201
        status, body = upload(server.url, b"this is not a video", filename="notes.txt")
        assert status == 400 and "not a readable video" in body["detail"]
        status, body = upload(server.url, b"\0" * (3 << 20))
        assert status == 413
        status, body = request(f"{server.url}/v1/streams", "POST", json.dumps({"url": "file:///etc/passwd"}).encode(),
                               {"Content-Type": "application/json"})
        assert status == 400 and "network stream" in body["detail"]
        status, body = request(f"{server.url}/v1/streams", "POST",
                               json.dumps({"url": f"http://127.0.0.1:{free_port()}/none.ts"}).encode(),
                               {"Content-Type": "application/json"})
        assert status == 400  # unreachable
        got = events(server.url, good["id"])
        assert [e["type"] for e in got] == ["window"] * 3 + ["end"]
        status, vtt = request(f"{server.url}/v1/streams/{good['id']}/vtt")
        assert status == 200 and vtt.startswith("WEBVTT")


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


def test_the_stream_limit_and_the_api_key(processor, tmp_path, clip):
    with Server(processor, tmp_path, max_streams=1, api_key="s3cret") as server:
        assert upload(server.url, clip)[0] == 401
        auth = {"Authorization": "Bearer s3cret"}
        status, first = upload(server.url, clip, headers=auth)
        assert status == 201
        assert upload(server.url, clip, headers=auth)[0] == 429
        assert request(f"{server.url}/v1/streams/{first['id']}", "DELETE", headers=auth)[0] == 200
        assert request(f"{server.url}/v1/health")[0] == 200  # health needs no key
        assert request(f"{server.url}/")[0] == 200


def test_stream_writes_subtitles(processor, tmp_path, clip, capsys):
    from livecc.cli import main

    (tmp_path / "clip.mp4").write_bytes(clip)
    assert main(["stream", str(tmp_path / "clip.mp4"), "--model", "tiny", "--fast", "--vtt",
                 str(tmp_path / "out.vtt"), "--max-new-tokens", "3"]) == 0
    text = (tmp_path / "out.vtt").read_text()
    from livecc.data.words import parse_vtt

    assert text.startswith("WEBVTT\n\n") and isinstance(parse_vtt(text), list)
