"""The step loop: one thread owns the engine. Each round it takes the next window of every stream
that has one, checks each on its own, and steps them together; when the batched step fails, each
stream's window is stepped alone, so only the stream whose window fails hears the error and the
others go on. Other threads never wait on the engine: they queue windows, questions and closes,
which the loop applies between rounds."""

from __future__ import annotations

import collections
import queue
import statistics
import threading
import time
from typing import Protocol

from .served import ServedStream

__all__ = ["StepLoop", "StreamBook", "line_seconds"]

RECENT_ROUNDS = 64  # rounds the engine's round time is read from (after warm-up, at today's load)


class StreamBook(Protocol):
    """What the loop needs of the streams' owner (the hub): the streams to step, what to do with a
    window's result or a stream's failure, and its own work between rounds."""

    def live_streams(self) -> list[ServedStream]: ...

    def said(self, stream: ServedStream, window, result, arrived: float) -> None: ...

    def fail(self, stream: ServedStream, message: str) -> None: ...

    def housekeeping(self) -> None: ...


class StepLoop:
    def __init__(self, engine, book: StreamBook):
        self.engine, self.book = engine, book
        self.wake = threading.Event()
        self.running = True
        self.busy_seconds = 0.0
        self.recent: collections.deque[tuple[float, int]] = collections.deque(maxlen=RECENT_ROUNDS)  # (s, streams)
        self.thread = threading.Thread(target=self._run, name="livecc-engine", daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.running = False
        self.wake.set()
        self.thread.join(timeout=30)

    def _run(self) -> None:
        while self.running:
            self.wake.wait(timeout=0.1)
            self.wake.clear()
            self.book.housekeeping()
            while self.running and self._round():
                self.book.housekeeping()

    def _round(self) -> bool:
        """One step over every stream with a window; False when none had one."""
        ready = []
        for stream in self.book.live_streams():
            try:
                window, arrived = stream.windows.get_nowait()
            except queue.Empty:
                continue
            while stream.questions:
                stream.state.questions.append(stream.questions.popleft())  # checked when asked
            try:
                self.engine.check_frames(stream.state, window.frames)
            except ValueError as e:
                self.book.fail(stream, str(e))
                continue
            ready.append((stream, window, arrived))
        if not ready:
            return False
        started = time.perf_counter()
        try:
            self._publish(ready, self.engine.step([s.state for s, _, _ in ready], [w for _, w, _ in ready]))
        except Exception:  # one of them: each alone now (the engine put every stream back as it was)
            for stream, window, arrived in ready:
                try:
                    self._publish([(stream, window, arrived)], self.engine.step([stream.state], [window]))
                except Exception as e:  # this stream's window: its error, its end; never the others'
                    self.book.fail(stream, f"{type(e).__name__}: {e}")
        finally:
            took = time.perf_counter() - started
            self.busy_seconds += took
            self.recent.append((took, len(ready)))
        return True

    def round_seconds(self, windows: int) -> float | None:
        """What a round of ``windows`` stream-windows would take, by a line through the recent rounds
        (a fixed part per round, a part per window: batching makes a window cheaper in a larger
        round); None before the first round."""
        fit = self.round_fit()
        if fit is None:
            return None
        n_mean, s_mean, slope = fit
        # one round size seen: all of its cost taken as per window
        return line_seconds(fit, windows, s_mean / n_mean if slope is None else slope)

    def round_fit(self) -> tuple[float, float, float | None] | None:
        """The recent rounds' mean windows, mean seconds and seconds per window more (None where
        one round size was seen: the fixed and the per-window parts cannot be told apart); None
        before the first round."""
        rounds = list(self.recent)
        if not rounds:
            return None
        n_mean = statistics.fmean(n for _, n in rounds)
        s_mean = statistics.fmean(s for s, _ in rounds)
        spread = sum((n - n_mean) ** 2 for _, n in rounds)
        if spread == 0:
            return n_mean, s_mean, None
        return n_mean, s_mean, max(0.0, sum((n - n_mean) * (s - s_mean) for s, n in rounds) / spread)

    def _publish(self, ready: list[tuple[ServedStream, object, float]], results) -> None:
        for (stream, window, arrived), result in zip(ready, results):
            self.book.said(stream, window, result, arrived)


def line_seconds(fit: tuple[float, float, float | None], windows: int, slope: float) -> float:
    """A round of ``windows`` stream-windows on the line through a :meth:`StepLoop.round_fit`'s mean
    round with ``slope`` seconds per window more, its fixed part at least zero."""
    n_mean, s_mean, _ = fit
    return max(0.0, s_mean - slope * n_mean) + slope * windows
