"""One engine replica of a server on several engines: a :class:`~.hub.Hub` behind the calls the
router makes (``livecc serve --replicas N`` deploys it on Ray Serve, one per GPU).

The router keeps the door (Host, origin, key, sizes, URL policy, frame rate, a WebSocket's frames
into windows) and sends each stream's work to the replica that holds it: a reserved slot, the
stream's opening, its source (an upload's bytes, a checked URL, or its windows in order), its
questions and its end. Each stream's events come back as one stream of events per viewer of the
router, stamped with this replica's name and the time they left it. Nothing here imports Ray.
"""

from __future__ import annotations

import asyncio
import os
import time

from ..infer import SessionConfig
from .hub import Hub
from .served import Reservation, ServedStream
from .sources import Location

__all__ = ["EngineReplica"]

GIVEN_UP = 4096  # tokens given up before their reservation, remembered


class EngineReplica:
    def __init__(self, name: str, model: str, device: str | None, hub_options: dict, session: dict):
        from ..models import load_model

        loaded, processor = load_model(model, device)
        self.name = name
        self.hub = Hub(loaded, processor, config=SessionConfig.for_model(loaded, **session), **hub_options)
        self.slots: dict[str, Reservation] = {}
        self.given_up: dict[str, None] = {}  # tokens released before their reservation arrived, oldest first

    def capacity(self) -> dict:
        """What placement weighs: the slots held, what a round of the engine would take with one
        more stream (from its recent rounds; None before its first) and the window period it must
        keep up with."""
        hub, plan = self.hub, self.hub.config.plan
        streams = hub.held()
        return {"replica": self.name, "pid": os.getpid(), "streams": streams, "max_streams": hub.max_streams,
                "period_s": plan.frames_per_window / plan.fps, "round_s": hub.loop.round_seconds(streams + 1),
                "fit": hub.loop.round_fit()}

    def reserve(self, token: str) -> None:
        """A slot, named ``token`` by the router, for a stream about to be opened
        (:class:`~.served.HubFull` when none is free); none when the router has already given the
        token up (its call came too late, and its release first)."""
        if token in self.given_up:
            del self.given_up[token]
            return
        self.slots[token] = self.hub.reserve()

    def release(self, token: str) -> None:
        slot = self.slots.pop(token, None)
        if slot is not None:
            slot.release()
        else:  # not reserved yet: its reservation, when it comes, is not made
            self.given_up[token] = None
            if len(self.given_up) > GIVEN_UP:  # those refused for good never come: forget the oldest
                del self.given_up[next(iter(self.given_up))]

    def open(self, token: str, source: str, query: str) -> dict:
        """The stream in slot ``token`` -> its id and window plan (ValueError for a bad query)."""
        slot = self.slots.pop(token, None)
        if slot is None:
            raise ValueError("the stream's reservation has lapsed")
        stream = self.hub.open(slot, source, query)
        return {"id": stream.id, "plan": stream.state.config.plan}

    def read(self, stream_id: str, source: bytes | Location, realtime: bool = True) -> None:
        """Feed the stream from an upload (its bytes, written here and deleted with the stream) or a
        URL the router has checked."""
        stream = self._stream(stream_id)
        if isinstance(source, bytes):
            stream.upload = self.hub.new_upload(".upload")
            stream.upload.write_bytes(source)
            source = Location(str(stream.upload))
        self.hub.read(stream, source, realtime=realtime)

    def enqueue(self, stream_id: str, window) -> None:
        """A window of a viewer's frames (made into windows at the router), in order."""
        stream = self._stream(stream_id)
        stream.last_input = time.monotonic()
        self.hub.enqueue(stream, window)

    def ask(self, stream_id: str, text) -> str:
        return self.hub.ask(self._stream(stream_id), text)

    def finish(self, stream_id: str) -> None:
        self.hub.finish(self._stream(stream_id))

    def close(self, stream_id: str) -> None:
        self.hub.close(self._stream(stream_id))

    async def events(self, stream_id: str):
        """The stream's events from its start (what was said already, then each as it comes) to its
        end, each stamped with this replica and the time it left (``sent``, seconds since the epoch)."""
        stream = self._stream(stream_id)
        viewer, missed = stream.viewers.subscribe(asyncio.get_running_loop())
        try:
            for event in missed:
                yield self._stamp(event)
                if event["type"] == "end":
                    return
            while True:
                event = await viewer.queue.get()
                yield self._stamp(event)
                if event["type"] == "end":
                    return
        finally:
            stream.viewers.unsubscribe(viewer)

    def metrics(self) -> dict:
        return {"replica": self.name, "pid": os.getpid(), **self.hub.metrics()}

    def check_health(self) -> None:
        """Ray Serve's health check: the engine's thread must be alive."""
        if not self.hub.loop.thread.is_alive():
            raise RuntimeError("the engine's thread has ended")

    def _stamp(self, event: dict) -> dict:
        return {**event, "replica": self.name, "sent": time.time()}

    def _stream(self, stream_id: str) -> ServedStream:
        stream = self.hub.get(stream_id)
        if stream is None:
            raise KeyError(f"no stream {stream_id!r} on {self.name}")
        return stream

    def __del__(self):
        hub = getattr(self, "hub", None)
        if hub is not None:
            hub.shutdown()
