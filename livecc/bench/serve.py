"""``livecc serve`` under load: how many live streams, each with its viewers, one server holds with
every window delivered and ``/v1/health`` answering under a second, and where it stops.

A real server on 127.0.0.1 (the tiny model on CPU; the 7B shape on a GPU), and for each level of
N streams: N WebSocket clients sending frames at 2 FPS in real time for ``--seconds``, each stream
watched by ``--viewers`` server-sent-event clients, and a client asking for health every 100 ms.
A level holds when every window of every stream reaches its sender and all its viewers, none is
dropped, and health's slowest answer is under 1 s; the sweep stops after the first that does not.
Each window's lag is how long after its last frame was sent its commentary came back. With
``--flood`` every level runs again beside one more client sending frames as fast as it can, and
the row says what that neighbour did to the others' p99 lag.

With ``--replicas 1,2,3`` the sweep runs again behind ``livecc serve --replicas R`` for each R (Ray
Serve; a Ray started for it, or ``RAY_ADDRESS``'s), and each row gives the router's added latency
per event (from leaving its replica to reaching the router).

    livecc bench serve [--streams 1,2,4,8,16] [--viewers 4] [--seconds 15] [--flood] [--replicas 1,2,3]
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import io
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np

from ..infer.stream import percentile
from .results import Sweep, on_gpu


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _jpeg(value: int, size: int) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.full((size, size, 3), value, dtype=np.uint8)).save(buffer, format="JPEG")
    return buffer.getvalue()


def _sender(port: int, seconds: float, size: int, got: list, ids: list, lags: list, refused: list) -> None:
    """One live stream: frames at 2 FPS in real time, then the end; counts the windows said to it and
    how long after its last frame each came back (a stream the server refuses: its reason)."""
    from websockets.sync.client import connect

    with connect(f"ws://127.0.0.1:{port}/v1/ws", max_size=None) as ws:
        opened = json.loads(ws.recv())
        if "id" not in opened:
            refused.append(opened.get("message", str(opened)))
            return
        ids.append(opened["id"])
        start, frames = time.monotonic(), [_jpeg(v, size) for v in range(0, 250, 25)]

        def receive():
            try:
                for message in ws:
                    event = json.loads(message)
                    got.append(event["type"])
                    if event["type"] == "window":  # its last frame was frame end * 2 - 1, sent at start + that / 2
                        lags.append(time.monotonic() - (start + (event["end"] * 2 - 1) / 2))
                    if event["type"] == "end":
                        return
            except Exception:  # noqa: BLE001  the connection closing ends the count
                return

        reader = threading.Thread(target=receive, daemon=True)
        reader.start()
        for i in range(int(seconds * 2)):
            if (wait := start + i / 2 - time.monotonic()) > 0:
                time.sleep(wait)
            ws.send(frames[i % len(frames)])
        ws.send(json.dumps({"type": "end"}))
        reader.join(timeout=120)


def _flooder(port: int, seconds: float, size: int, sent: list) -> None:
    """A client sending frames as fast as the connection takes them (the server holds it back to its
    frame rate, so its socket is shut at the end rather than closed politely behind its queue)."""
    from websockets.sync.client import connect

    with connect(f"ws://127.0.0.1:{port}/v1/ws", max_size=None) as ws:
        ws.recv()
        stop = threading.Timer(seconds, ws.socket.shutdown, args=(socket.SHUT_RDWR,))
        stop.start()
        frame = _jpeg(90, size)
        try:
            while True:
                ws.send(frame)
                sent.append(1)
        except Exception:  # noqa: BLE001  the socket shut at the end
            return
        finally:
            stop.cancel()


def _viewer(port: int, stream_id: str, got: list) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=180)
    conn.request("GET", f"/v1/streams/{stream_id}/events")
    for line in conn.getresponse():
        if line.startswith(b"data: "):
            kind = json.loads(line[6:])["type"]
            got.append(kind)
            if kind == "end":
                break
    conn.close()


def level(port: int, streams: int, viewers: int, seconds: float, size: int, flood: bool = False) -> dict:
    sent_to, seen_by, ids, health, stop = [[] for _ in range(streams)], [], [], [], threading.Event()
    lags, flooded, refused = [], [], []

    def ask_health():
        while not stop.is_set():
            t0 = time.monotonic()
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            conn.request("GET", "/v1/health")
            conn.getresponse().read()
            conn.close()
            health.append(time.monotonic() - t0)
            time.sleep(0.1)

    prober = threading.Thread(target=ask_health, daemon=True)
    prober.start()
    senders = [threading.Thread(target=_sender, args=(port, seconds, size, sent_to[i], ids, lags, refused),
                                daemon=True)
               for i in range(streams)]
    if flood:
        senders.append(threading.Thread(target=_flooder, args=(port, seconds, size, flooded), daemon=True))
    for t in senders:
        t.start()
    deadline = time.monotonic() + 30
    while len(ids) + len(refused) < streams and time.monotonic() < deadline:
        time.sleep(0.05)
    watchers = []
    for stream_id in list(ids):
        for _ in range(viewers):
            seen_by.append([])
            watchers.append(threading.Thread(target=_viewer, args=(port, stream_id, seen_by[-1]), daemon=True))
    for t in watchers:
        t.start()
    for t in senders + watchers:
        t.join(timeout=seconds + 180)
    stop.set()
    prober.join(timeout=15)
    expected = 1 + (int(seconds * 2) - 6) // 2  # the plan's windows: 6 frames, then 2 each
    delivered = sum(kinds.count("window") for kinds in sent_to)
    viewed = sum(kinds.count("window") for kinds in seen_by)
    dropped = sum(kinds.count("dropped") for kinds in sent_to)
    holds = (delivered == streams * expected and viewed == streams * viewers * expected and dropped == 0
             and max(health) < 1.0)
    return {"streams": streams, "flooding_neighbour": flood, "flood_frames_sent": len(flooded),
            "viewers_per_stream": viewers, "windows_expected": streams * expected,
            "windows_to_senders": delivered, "windows_to_viewers": viewed,
            "viewer_windows_expected": streams * viewers * expected, "dropped": dropped,
            "refused": len(refused), "refusal": refused[0] if refused else None,
            "lag_p50_s": percentile(lags, 0.5) if lags else None, "lag_p99_s": percentile(lags, 0.99) if lags else None,
            "health_p50_ms": percentile(health, 0.5) * 1e3, "health_max_ms": max(health) * 1e3, "holds": holds}


@contextlib.contextmanager
def one_engine(max_streams: int, max_viewers: int):
    """The server in this process, on one engine -> its port."""
    import uvicorn

    from ..models import tiny_qwen_vl
    from ..qwen_vl import offline_processor
    from ..serve import Hub, create_app
    from .measure import random_qwen2vl

    model = random_qwen2vl("qwen2vl-7b", "sdpa").eval() if on_gpu() else tiny_qwen_vl(seed=0)
    hub = Hub(model, offline_processor(), max_streams=max_streams, max_viewers=max_viewers)
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(hub), host="127.0.0.1", port=port, log_level="warning",
                                           ws_max_size=1 << 24))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    try:
        yield port
    finally:
        server.should_exit = True
        thread.join(timeout=15)
        hub.shutdown()


@contextlib.contextmanager
def replicated(replicas: int, max_streams: int, max_viewers: int, model: str, *, cpus: float | None = None,
               env: dict | None = None, timeout_s: float = 600):
    """``livecc serve --replicas`` in a process of its own (Ray started for it, or ``RAY_ADDRESS``'s
    in ``env``) -> its port, once every replica answers; ``cpus`` each (default: the machine's
    shared out, at most one)."""
    port = _free_port()
    cpus = min(1.0, (os.cpu_count() or 1) * 1000 // replicas / 1000) if cpus is None else cpus  # all placed
    command = [sys.executable, "-m", "livecc.cli", "serve", "--model", model, "--replicas", str(replicas),
               "--replica-cpus", f"{cpus:g}", "--max-streams", str(max_streams), "--max-viewers", str(max_viewers),
               "--port", str(port)]
    log = tempfile.TemporaryFile("w+")
    server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.monotonic() + timeout_s
        while _get(port, "/v1/health").get("replicas") != replicas:
            if server.poll() is not None or time.monotonic() > deadline:
                log.seek(0)
                raise RuntimeError(f"livecc serve --replicas {replicas} did not start: {log.read()[-3000:]}")
            time.sleep(0.5)
        yield port
    finally:
        server.send_signal(signal.SIGINT)
        try:
            server.wait(120)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()


def _get(port: int, path: str) -> dict:
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request("GET", path)
        body = conn.getresponse().read()
        conn.close()
        return json.loads(body)
    except (OSError, ValueError):
        return {}


def run(argv=()) -> Sweep:
    parser = argparse.ArgumentParser(prog="livecc bench serve", description=__doc__.splitlines()[0])
    parser.add_argument("--streams", default="1,2,4,8,16", help="stream counts, in order")
    parser.add_argument("--viewers", type=int, default=4, help="server-sent-event viewers per stream")
    parser.add_argument("--seconds", type=float, default=15.0, help="seconds of frames each stream sends")
    parser.add_argument("--size", type=int, default=112, help="frame side in pixels")
    parser.add_argument("--flood", action="store_true", help="run each level again beside a flooding client")
    parser.add_argument("--replicas", default="", help="comma-separated replica counts: the sweep again behind "
                        "`livecc serve --replicas R` for each (Ray Serve), with the router's added latency")
    parser.add_argument("--model", default="tiny", help="the replicas' model (a checkpoint directory, or tiny)")
    args = parser.parse_args(list(argv))
    counts = [int(n) for n in args.streams.split(",")]
    servers = [("one engine", 0)] + [(f"{r} replicas", int(r)) for r in args.replicas.split(",") if r]
    rows = []
    for name, replicas in servers:
        serving = (replicated(replicas, max(counts) + args.flood, args.viewers + 1, args.model) if replicas else
                   one_engine(max(counts) + args.flood, args.viewers + 1))
        with serving as port:
            for n in counts:
                for flood in (False, True) if args.flood else (False,):
                    rows.append({"server": name, "replicas": replicas or 1,
                                 **level(port, n, args.viewers, args.seconds, args.size, flood)})
                    r = rows[-1]
                    if replicas:
                        metrics = _get(port, "/v1/metrics")
                        r.update({k: metrics.get(k) for k in ("router_p50_ms", "router_p99_ms")})
                    beside = " beside a flooding client" if flood else ""
                    print(f"{name}: {n} streams x {args.viewers} viewers{beside}: "
                          f"{'holds' if r['holds'] else 'does not hold'} "
                          f"({r['windows_to_senders']}/{r['windows_expected']} windows, {r['refused']} refused, "
                          f"lag p99 {r['lag_p99_s'] or 0:.2f} s, health max {r['health_max_ms']:.0f} ms)", flush=True)
                if not all(r["holds"] for r in rows[-(1 + args.flood):]):
                    break
    held = {name: max([r["streams"] for r in rows if r["server"] == name and r["holds"]
                       and not r["flooding_neighbour"]], default=0) for name, _ in servers}
    notes = (f"{'7B Qwen2-VL shape (random bf16 weights)' if on_gpu() else 'tiny random Qwen2-VL on CPU'}; each stream "
             f"{args.seconds:g} s of {args.size}x{args.size} JPEG frames at 2 FPS over a WebSocket in real time, "
             f"{args.viewers} SSE viewers each, health asked every 100 ms; default session settings.")
    headline = [{"target": "serve load",
                 "figure": "; ".join(f"{name}: held up to {n} streams x {args.viewers} viewers"
                                     for name, n in held.items())}]
    one = held.get("1 replicas")
    scaled = [f"{name}: {held[name] / (r * one):.2f}x" for name, r in servers if r > 1] if one else []
    if scaled:
        headline.append({"target": "replicas",
                         "figure": "streams held / (N x one replica's): " + "; ".join(scaled)})
    routed = [r["router_p99_ms"] for r in rows if r.get("router_p99_ms") is not None]
    if routed:
        headline.append({"target": "router", "figure": f"added latency per event p99 <= {max(routed):.1f} ms"})
    cols = ["server", "replicas", "streams", "flooding_neighbour", "flood_frames_sent", "viewers_per_stream",
            "windows_expected", "windows_to_senders", "viewer_windows_expected", "windows_to_viewers", "dropped",
            "refused", "lag_p50_s", "lag_p99_s", "health_p50_ms", "health_max_ms", "router_p50_ms", "router_p99_ms",
            "holds"]
    return Sweep("serve-replicas" if args.replicas else "serve", rows, cols, notes, None, headline)
