"""``livecc serve --replicas 2`` as a user runs it on a Ray cluster (the local one the data
pipeline's Ray tests share, joined through ``RAY_ADDRESS``), with the tiny model: streams placed by
headroom and each served by one replica, a replica killed mid-stream ending only its own streams,
the router's door, and the page through the router."""

import json
import os
import signal
import threading
import time

import pytest

pytest.importorskip("ray.serve", reason="ray[serve] is part of the dev extra (make setup installs it)")
pytest.importorskip("fastapi")

from test_serve import clip, events, free_port, jpeg, post_json, request, until, upload  # noqa: E402, F401

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("ray")]


@pytest.fixture(scope="module")
def server(ray_cluster):
    """The server's URL; the command runs until the module's tests are done."""
    from livecc.bench.serve import replicated

    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"} | {"RAY_ADDRESS": ray_cluster}
    with replicated(2, 4, 16, "tiny", cpus=1, env=env, timeout_s=240) as port:
        yield f"http://127.0.0.1:{port}"


@pytest.fixture
def router(server):
    """The server, once both replicas answer and the streams of the test before have given their
    slots back (their engines close them between rounds, after their end events)."""
    until(lambda: [r["streams_holding_slots"] for r in replicas(server)] == [0, 0], 120)
    return server


def replicas(url) -> list[dict]:
    return sorted(request(f"{url}/v1/metrics")[1]["replicas"], key=lambda r: r["replica"])


def browser_stream(url, frames, events_out, pace=0.5, hold=None):
    """A browser's stream over the WebSocket: ``frames`` JPEGs (the first window's at once, then one
    each ``pace`` seconds), then the end; its events into ``events_out`` as they come."""
    from websockets.exceptions import ConnectionClosed
    from websockets.sync.client import connect

    with connect(url.replace("http", "ws") + "/v1/ws", open_timeout=60) as ws:
        events_out.append(json.loads(ws.recv(timeout=60)))
        if hold is not None:
            hold.wait()

        def receive():
            while events_out[-1]["type"] != "end":
                events_out.append(json.loads(ws.recv(timeout=120)))

        reader = threading.Thread(target=receive)
        reader.start()
        try:
            for i, frame in enumerate(frames):
                ws.send(frame)
                if i >= 5:
                    time.sleep(pace)
            ws.send(json.dumps({"type": "end"}))
        except ConnectionClosed:  # the stream ended first (its replica was lost): the reader has its end
            pass
        reader.join(180)


def test_six_streams_spread_three_and_three_and_each_stays_on_its_replica(router):
    """Opened before any window is stepped, six streams go 3 + 3 (equal replicas, equal headroom);
    every window of a stream is said by the replica that holds it."""
    opened, got = threading.Barrier(6), [[] for _ in range(6)]
    frames = [[jpeg((40 * i + 10 * k) % 256) for k in range(10)] for i in range(6)]
    threads = [threading.Thread(target=browser_stream, args=(router, frames[i], got[i]), kwargs=dict(hold=opened))
               for i in range(6)]
    for t in threads:
        t.start()
    until(lambda: sum(len(g) > 0 for g in got) == 6, 120)
    assert [r["streams_holding_slots"] for r in replicas(router)] == [3, 3], replicas(router)
    for t in threads:
        t.join(180)
    said_by = {}
    for stream in got:
        assert stream[0]["type"] == "open" and stream[-1]["type"] == "end"
        windows = [e for e in stream if e["type"] == "window"]
        assert [(w["start"], w["end"]) for w in windows] == [(0.0, 3.0), (3.0, 4.0), (4.0, 5.0)], stream
        assert len({w["replica"] for w in windows}) == 1
        said_by[stream[0]["id"]] = windows[0]["replica"]
    assert sorted(list(said_by.values()).count(name) for name in set(said_by.values())) == [3, 3]


def test_the_routers_door_is_the_servers(router, clip):  # noqa: F811
    assert request(f"{router}/v1/health", headers={"Host": "rebind.evil.example"})[0] == 421
    status, _ = post_json(router, "/v1/streams", {"url": "http://127.0.0.1:1/"},
                          headers={"Origin": "https://evil.example"})
    assert status == 403
    assert post_json(router, "/v1/streams", {"url": "http://127.0.0.1:1/"})[0] == 400  # the server's own network
    status, made = upload(router, clip, query="Describe it.")
    assert status == 201, made
    said = events(router, made["id"])
    assert said[-1]["type"] == "end" and len([e for e in said if e["type"] == "window"]) == 3
    assert request(f"{router}/v1/streams/{made['id']}/vtt")[1].count("-->") == 3


def test_a_killed_replica_ends_only_its_streams(router, clip):  # noqa: F811
    """Live streams on both replicas (opened until each holds one: placement goes by each replica's
    measured rounds, which on a shared machine need not split two streams one and one); one
    replica's process killed after the first windows: its streams end saying their replica was
    lost, the others keep every window; a new stream is served, and Ray Serve's new replica rejoins."""
    hold, streams = threading.Event(), []  # (thread, its events)
    held = lambda: [r["streams_holding_slots"] for r in replicas(router)]
    try:
        while len(streams) < 2 or (0 in held() and len(streams) < 4):
            got, k = [], len(streams)
            frames = [jpeg((60 * k + 5 * j) % 256) for j in range(16)]
            streams.append((threading.Thread(target=browser_stream, args=(router, frames, got),
                                             kwargs=dict(hold=hold)), got))
            streams[-1][0].start()
            until(lambda: streams[-1][1], 120)
        assert 0 not in held(), held()
    finally:
        hold.set()  # the streams' threads go on (and end) whatever was asserted
    until(lambda: all(any(e["type"] == "window" for e in got) for _, got in streams), 120)
    said_by = lambda got: next(e for e in got if e["type"] == "window")["replica"]
    first = said_by(streams[0][1])
    victim = next(r for r in replicas(router) if r["replica"] == first)
    os.kill(victim["pid"], signal.SIGKILL)
    for t, _ in streams:
        t.join(180)
    lost = [got for _, got in streams if said_by(got) == first]
    kept = [got for _, got in streams if said_by(got) != first]
    assert lost and kept
    for got in lost:
        assert got[-1]["type"] == "end" and "was lost" in got[-1].get("error", ""), got
        assert first in got[-1]["error"]
        assert any(e["type"] == "error" and "was lost" in e["message"] for e in got)
    for got in kept:
        windows = [e for e in got if e["type"] == "window"]
        assert got[-1]["type"] == "end" and "error" not in got[-1] and got[-1]["dropped_windows"] == 0, got[-1]
        assert len(windows) == 6 and first not in {w["replica"] for w in windows}  # 6 + 5 x 2 frames: every window
    status, made = upload(router, clip)
    assert status == 201, made
    assert len([e for e in events(router, made["id"]) if e["type"] == "window"]) == 3
    until(lambda: request(f"{router}/v1/health")[1]["replicas"] == 2, 120)  # started again, placed on again


def test_the_page_through_the_router(router, tmp_path):
    """The browser test of the single server, pointed at the router."""
    page = pytest.importorskip("test_serve_browser", reason="Playwright is not installed (pip install playwright)")
    if page.CHROMIUM is None:
        pytest.skip("Chromium is not installed (make test installs Debian's chromium)")
    with page.chromium() as browser:
        page.page_streams_a_clip(browser, router, page.moving_clip(tmp_path), tmp_path)


class _Answer:
    def __init__(self, fn, args):
        try:
            self.value, self.error = fn(*args), None
        except Exception as e:  # noqa: BLE001  raised where Ray raises it: at .result()
            self.value, self.error = None, e

    def result(self, timeout_s=None):
        if self.error is not None:
            raise self.error
        return self.value


class _Call:
    def __init__(self, fn):
        self.fn = fn

    def remote(self, *args):
        return _Answer(self.fn, args)


class _Replica:
    """A stand-in for a replica's handle: its load as placement reads it."""

    def __init__(self, streams, cost, up=True):
        self.streams, self.cost, self.up, self.reserved, self.slow = streams, cost, up, 0, False
        self.capacity = _Call(self._capacity)
        self.reserve = _Call(self._reserve)
        self.released = []
        self.release = _Call(self.released.append)

    def _capacity(self):
        if not self.up:
            raise ConnectionError("replica down")
        held = self.streams + self.reserved
        return {"streams": held, "max_streams": 8, "period_s": 1.0, "round_s": (held + 1) * self.cost}

    def _reserve(self, token):
        if self.slow:
            raise TimeoutError("no answer in time")
        self.reserved += 1


def test_placement_goes_by_real_time_headroom_and_refuses_saying_each_replicas_load(tmp_path):
    from livecc.serve.router import HubFull, Router

    busy, roomy, down = _Replica(streams=3, cost=0.2), _Replica(streams=1, cost=0.3), _Replica(1, 0.1, up=False)
    router = Router([busy, roomy, down], upload_dir=tmp_path)
    try:
        slot = router.reserve()  # with one more: busy 1 - 4 x 0.2 = 20% left, roomy 1 - 2 x 0.3 = 40%, down not asked
        assert slot.replica == 1 and roomy.reserved == 1 and busy.reserved == 0
        slot = router.reserve()  # roomy now 1 - 3 x 0.3 = 10%: busy's 20% wins
        assert slot.replica == 0
        roomy.slow = True  # roomier again (1 - 3 x 0.1), but its reservation times out: its token given back
        roomy.cost = 0.1
        slot = router.reserve()
        assert slot.replica == 0 and len(roomy.released) == 1 and roomy.released[0] != slot.token
        roomy.slow, roomy.cost = False, 0.3
        busy.cost = roomy.cost = 0.5  # neither holds one more in real time, though both have free slots
        with pytest.raises(HubFull, match=r"real time \(livecc-engine-0: 5/8 streams, headroom -200%, "
                                          r"livecc-engine-1: 2/8 streams, headroom -50%\)"):
            router.reserve()
        busy.up = roomy.up = False
        with pytest.raises(HubFull, match="no engine replica is up"):
            router.reserve()
    finally:
        router.shutdown()


def test_a_replica_before_its_first_round_is_judged_as_the_measured_ones_run():
    """A fresh replica (no round yet) beside one that has run rounds: taken to cost what the
    measured one costs a stream-window, so two streams opened at once go one to each."""
    from livecc.serve.router import _estimated, _headroom

    fresh = {"streams": 0, "max_streams": 8, "period_s": 1.0, "round_s": None}
    measured = {"streams": 0, "max_streams": 8, "period_s": 1.0, "round_s": 0.05}
    out = _estimated({0: dict(fresh), 1: dict(measured)})
    assert out[0]["round_s"] == pytest.approx(0.05) and _headroom(out[0]) == _headroom(out[1])
    alone = _estimated({0: dict(fresh), 1: dict(fresh)})  # none measured: free slots stand for each
    assert alone[0]["round_s"] is None and _headroom(alone[0]) == pytest.approx(1 - 1 / 8)


def test_a_replica_that_ran_one_round_size_takes_the_others_cost_per_window():
    """Rounds of 3 windows only (0.3 s: 150 ms a round + 50 ms a window, not told apart) beside a
    replica whose rounds gave those parts: the first, empty, is judged to run one window in 0.2 s,
    not 0.1 s (a third of its rounds), so it looks no emptier than the other, which holds no stream."""
    from livecc.serve.router import _estimated

    one_size = {"streams": 0, "max_streams": 8, "period_s": 1.0, "round_s": 0.1, "fit": (3.0, 0.3, None)}
    fitted = {"streams": 0, "max_streams": 8, "period_s": 1.0, "round_s": 0.2, "fit": (2.0, 0.25, 0.05)}
    out = _estimated({0: dict(one_size), 1: dict(fitted)})
    assert out[0]["round_s"] == pytest.approx(0.2) and out[1]["round_s"] == pytest.approx(0.2)


def test_a_rounds_time_is_read_as_a_fixed_part_and_a_part_per_window():
    from livecc.serve.loop import StepLoop

    class NoStreams:
        def live_streams(self):
            return []

        def housekeeping(self):
            pass

    loop = StepLoop(None, NoStreams())
    try:
        assert loop.round_seconds(4) is None  # before the first round
        loop.recent.extend([(0.1, 2)] * 3)  # one size seen: its cost per window
        assert loop.round_seconds(4) == pytest.approx(0.2)
        loop.recent.extend([(0.05 + 0.01 * n, n) for n in (1, 4, 8, 16)] * 10)  # mostly 50 ms + 10 ms a window
        assert loop.round_seconds(20) == pytest.approx(0.25, abs=0.02)
    finally:
        loop.stop()
