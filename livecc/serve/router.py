"""``livecc serve --replicas N``: the same page and API in front of N engine replicas on Ray Serve,
each stream pinned to the replica that holds its KV cache.

The :class:`Router` takes the place of the single server's :class:`~.hub.Hub` under the same app
(:func:`~.app.create_app`), so the door is the same: Host and origin, the key, sizes, URL policy,
a slot reserved before a byte of a body is read, the frame rate, a WebSocket's frames made into
windows. Placement is by real-time headroom, not by request count: a new stream goes to the
replica whose engine, by its own recent rounds (a fixed part and a part per window), has the most
of its window period left with one more stream (before its first round, its slots stand for it),
and is refused, saying why, when none can hold it in real time. Every later request of the stream
goes to that replica; its events come back on one stream per stream, fanned out here to its
viewers. A replica that dies ends only its own streams (each hears that its replica was lost);
Ray Serve starts it again and it rejoins placement when it answers.
"""

from __future__ import annotations

import collections
import queue
import statistics
import threading
import time
import uuid
from pathlib import Path

import ray
from ray import serve

from ..infer.stream import percentile
from .fanout import Viewers
from .loop import line_seconds
from .replica import EngineReplica
from .served import FrameRate, HubFull, Reservation, UploadDir
from .sources import FrameIntake, Location

__all__ = ["RemoteStream", "Router", "deploy", "undeploy"]

APP = "livecc-engine-{}"  # the Ray Serve application of replica i
ANSWER_S = 10.0  # what a replica may take to answer a call before it counts as down
_END = object()  # a frames stream's last item: no more windows


def deploy(replicas: int, model: str, *, device: str | None, hub_options: dict, session: dict,
           cpus: float = 1.0, gpus: float = 0.0) -> list:
    """Start (or join, with ``RAY_ADDRESS``) Ray and Ray Serve and deploy ``replicas`` engines, one
    application each (so a stream can be sent to the one that holds it) -> their handles, once
    every one is ready."""
    if not ray.is_initialized():
        ray.init(include_dashboard=False, log_to_driver=False, configure_logging=False)
    serve.start(http_options={"location": "NoServer"})  # the router is the door; Serve needs no proxy
    engine = serve.deployment(EngineReplica, ray_actor_options={"num_cpus": cpus, "num_gpus": gpus},
                              max_ongoing_requests=100_000, health_check_period_s=2, health_check_timeout_s=30,
                              graceful_shutdown_timeout_s=5)
    return [serve.run(engine.bind(APP.format(i), model, device, hub_options, session), name=APP.format(i),
                      route_prefix=None) for i in range(replicas)]


class RemoteStream:
    """What the router holds of a stream: its replica, its viewers, and for a browser's stream its
    frame allowance, its windows in the making and their sender (one at a time, in order)."""

    def __init__(self, stream_id: str, replica: int, source: str, plan, viewers: Viewers, upload: Path | None):
        self.id, self.replica, self.source, self.plan = stream_id, replica, source, plan
        self.viewers, self.upload = viewers, upload
        self.intake = FrameIntake(plan)
        self.rate = FrameRate.of(plan)
        self.outbox: queue.Queue = queue.Queue()
        self.closed_at: float | None = None

    @property
    def closed(self) -> bool:
        return self.closed_at is not None


class RemoteReservation(Reservation):
    def __init__(self, router: Router, replica: int, token: str):
        super().__init__(lambda: router.handles[replica].release.remote(token))
        self.replica, self.token = replica, token


class Router:
    def __init__(self, handles: list, *, max_viewers: int = 16, grace_s: float = 60.0,
                 upload_dir: str | Path | None = None):
        self.handles, self.max_viewers, self.grace_s = handles, max_viewers, grace_s
        self.names = [APP.format(i) for i in range(len(handles))]
        self.uploads = UploadDir(upload_dir)
        self.streams: dict[str, RemoteStream] = {}
        self.lock = threading.Lock()
        self.placing = threading.Lock()
        self.latencies: collections.deque[float] = collections.deque(maxlen=1000)  # replica -> router, s

    # ------------------------------------------------------------------ placement

    def capacities(self) -> dict[int, dict]:
        """Each replica that answers: its slots, its round time with one more stream, its period."""
        calls = {i: h.capacity.remote() for i, h in enumerate(self.handles)}
        answers = {}
        for i, call in calls.items():
            try:
                answers[i] = call.result(timeout_s=ANSWER_S)
            except Exception:  # down, or being started again by Ray Serve: not placed on
                continue
        return answers

    def reserve(self) -> RemoteReservation:
        """A slot on the replica with the most real-time headroom; :class:`HubFull` (saying why)
        when no replica can hold one more stream in real time."""
        self._forget()
        with self.placing:  # one placement at a time: each sees the slots the one before took
            return self._place()

    def _place(self) -> RemoteReservation:
        capacities = _estimated(self.capacities())
        if not capacities:
            raise HubFull("no engine replica is up; try again in a moment")
        ranked = sorted(((_headroom(c), -c["streams"], i) for i, c in capacities.items()), reverse=True)
        for room, _, i in ranked:
            if room < 0 or capacities[i]["streams"] >= capacities[i]["max_streams"]:
                continue
            token = uuid.uuid4().hex
            try:
                self.handles[i].reserve.remote(token).result(timeout_s=ANSWER_S)
                return RemoteReservation(self, i, token)
            except Exception:  # full since it answered, slow or gone: the next one (a late slot is given back)
                self.handles[i].release.remote(token)
                continue
        said = ", ".join(f"{self.names[i]}: {c['streams']}/{c['max_streams']} streams, headroom {_headroom(c):.0%}"
                         for i, c in sorted(capacities.items()))
        raise HubFull(f"no engine replica can take another stream in real time ({said})")

    # ------------------------------------------------------------------ streams

    def open(self, slot: RemoteReservation, source: str, query: str = "", upload: Path | None = None) -> RemoteStream:
        handle = self.handles[slot.replica]
        opened = handle.open.remote(slot.token, source, query).result(timeout_s=ANSWER_S)  # ValueError: bad query
        slot.taken = True  # the replica's stream holds it now
        stream = RemoteStream(opened["id"], slot.replica, source, opened["plan"], Viewers(self.max_viewers), upload)
        with self.lock:
            self.streams[stream.id] = stream
        threading.Thread(target=self._pump, args=(stream,), name=f"livecc-events-{stream.id}", daemon=True).start()
        if source == "frames":
            threading.Thread(target=self._send, args=(stream,), name=f"livecc-send-{stream.id}", daemon=True).start()
        return stream

    def read(self, stream: RemoteStream, location: Location, *, realtime: bool = True) -> None:
        """The stream's source to its replica: an upload's bytes (then deleted here) or the URL checked."""
        if stream.upload is not None:
            source = stream.upload.read_bytes()
            stream.upload.unlink(missing_ok=True)
        else:
            source = location
        self.handles[stream.replica].read.remote(stream.id, source, realtime).result(timeout_s=ANSWER_S)

    def get(self, stream_id: str) -> RemoteStream | None:
        return self.streams.get(stream_id)

    def new_upload(self, suffix: str) -> Path:
        return self.uploads.new(suffix)

    def take_frame(self, stream: RemoteStream) -> bool:
        return stream.rate.take()

    def frame_wait(self, stream: RemoteStream) -> float:
        return stream.rate.wait_s()

    def add_frame(self, stream: RemoteStream, frame) -> None:
        """One frame of a browser's stream: windows are made here (a frame of another size is the
        sender's SourceError) and go to the replica in order."""
        for window in stream.intake.push(frame):
            stream.outbox.put(window)

    def ask(self, stream: RemoteStream, text) -> str:
        return self.handles[stream.replica].ask.remote(stream.id, text).result(timeout_s=ANSWER_S)

    def finish(self, stream: RemoteStream) -> None:
        stream.outbox.put(_END)

    def close(self, stream: RemoteStream) -> None:
        stream.outbox.put(None)
        if not stream.closed:
            self.handles[stream.replica].close.remote(stream.id)

    # ------------------------------------------------------------------ each stream's threads

    def _pump(self, stream: RemoteStream) -> None:
        """The stream's events from its replica to its viewers here; a lost replica ends it."""
        name = self.names[stream.replica]
        try:
            for event in self.handles[stream.replica].options(stream=True).events.remote(stream.id):
                self.latencies.append(time.time() - event.pop("sent"))
                stream.viewers.publish(event)
                if event["type"] == "end":
                    return
            raise RuntimeError("its events ended without an end")
        except Exception as e:  # the replica died (or its stream vanished with it)
            message = f"the engine replica serving this stream ({name}) was lost; the stream has ended"
            stream.viewers.publish({"type": "error", "message": message, "replica": name})
            stream.viewers.publish({"type": "end", "windows": len(stream.viewers.said), "error": message,
                                    "cause": type(e).__name__, "replica": name})
        finally:
            stream.closed_at = time.monotonic()
            stream.outbox.put(None)
            if stream.upload is not None:
                stream.upload.unlink(missing_ok=True)

    def _send(self, stream: RemoteStream) -> None:
        """A browser's windows to the replica, one call at a time so they arrive in order."""
        handle = self.handles[stream.replica]
        while (item := stream.outbox.get()) is not None:
            try:
                if item is _END:
                    handle.finish.remote(stream.id).result(timeout_s=ANSWER_S)
                else:
                    handle.enqueue.remote(stream.id, item).result(timeout_s=ANSWER_S)
            except Exception:  # the replica is gone: its events' end says so
                return

    def _forget(self) -> None:
        now = time.monotonic()
        with self.lock:
            for stream_id in [i for i, s in self.streams.items() if s.closed and now - s.closed_at > self.grace_s]:
                del self.streams[stream_id]

    # ------------------------------------------------------------------ the server

    def health(self) -> dict:
        return {"replicas": len(self.capacities()), "replicas_total": len(self.handles)}

    def metrics(self) -> dict:
        """Every replica's metrics that answers, their totals, and the router's added latency (from
        an event leaving its replica to its arrival here)."""
        calls = [h.metrics.remote() for h in self.handles]
        replicas = []
        for call in calls:
            try:
                replicas.append(call.result(timeout_s=ANSWER_S))
            except Exception:
                continue
        summed = ("active_streams", "closed_streams", "streams_holding_slots", "max_streams", "viewers", "windows",
                  "dropped_windows", "dropped_frames", "dropped_events", "kv_pages_in_use", "kv_pages")
        total = {k: sum(r[k] for r in replicas) for k in summed}
        lat = [x * 1e3 for x in self.latencies]
        return {**total, "holds_real_time": all(r["holds_real_time"] for r in replicas),
                "replicas_up": len(replicas), "replicas_total": len(self.handles),
                "router_p50_ms": percentile(lat, 0.5) if lat else None,
                "router_p99_ms": percentile(lat, 0.99) if lat else None,
                "router_mean_ms": statistics.fmean(lat) if lat else None, "replicas": replicas}

    def shutdown(self) -> None:
        for stream in list(self.streams.values()):
            self.close(stream)
        self.uploads.remove()


def _estimated(capacities: dict[int, dict]) -> dict[int, dict]:
    """Every replica judged as the same engine: one whose recent rounds were all of one size (its
    fixed and per-window parts not told apart) takes the measured replicas' mean seconds per window
    more from its own mean round; one before its first round, their mean time per stream-window at
    its streams + 1. Else a replica would look emptier or fuller than another by how each is
    judged, not by its load."""
    slopes = [c["fit"][2] for c in capacities.values() if c.get("fit") and c["fit"][2] is not None]
    for c in capacities.values():
        if slopes and c.get("fit") and c["fit"][2] is None:
            c["round_s"] = line_seconds(c["fit"], c["streams"] + 1, sum(slopes) / len(slopes))
    measured = [c["round_s"] / (c["streams"] + 1) for c in capacities.values() if c["round_s"] is not None]
    if measured:
        for c in capacities.values():
            if c["round_s"] is None:
                c["round_s"] = sum(measured) / len(measured) * (c["streams"] + 1)
    return capacities


def _headroom(capacity: dict) -> float:
    """The share of the window period left in a round with one more stream, by the engine's own
    recent rounds (before any replica's first: its free slots stand for its capacity)."""
    if capacity["round_s"] is None:
        return 1.0 - (capacity["streams"] + 1) / capacity["max_streams"]
    return 1.0 - capacity["round_s"] / capacity["period_s"]


def undeploy(replicas: int) -> None:
    for i in range(replicas):
        try:
            serve.delete(APP.format(i))
        except Exception as e:  # already gone with its cluster
            print(f"livecc serve: {APP.format(i)} not deleted ({type(e).__name__}: {e})", flush=True)
