"""Run a pipeline stage's batches on Ray actors, for inputs that outgrow one machine.

The driver still reads the inputs, shards, writes and records progress exactly as
:func:`run_stage` does (so outputs, side files, reports and resumption are the same); only the
stage's work moves to a pool of Ray actors started once per run, each building its own stage from
``factory`` (a model loads once per actor and is never pickled). Batches go to the actors in turn
with at most ``window`` in flight, so the driver's memory stays bounded, and come back in order.
An actor whose process dies is restarted and its batch retried, so a lost worker costs a reload,
not the run. ``ray.init`` joins the cluster named by ``RAY_ADDRESS`` when set, else starts a local one.
"""

from __future__ import annotations

import collections
import pickle
from collections.abc import Callable, Iterator

from .runner import Outcome, Stage, run_batch

__all__ = ["RayStage"]

RESTARTS = 2  # of one actor (and retries of the batch it held) before the run fails


class _Worker:
    """A Ray actor: one stage, many batches (each a pickled list of items)."""

    def __init__(self, factory: Callable[[], Stage]):
        self.stage = factory()

    def run(self, items: bytes) -> bytes:
        return pickle.dumps(run_batch(self.stage, pickle.loads(items)))


class RayStage:
    def __init__(self, name: str, factory: Callable[[], Stage], *, window: int = 64, workers: int = 2,
                 num_cpus: float = 1.0, num_gpus: float = 0.0):
        self.name, self.factory = name, factory
        self.window, self.workers, self.num_cpus, self.num_gpus = max(1, window), workers, num_cpus, num_gpus

    def process_batches(self, batches: Iterator[list]) -> Iterator[list[Outcome]]:
        import ray

        if not ray.is_initialized():
            ray.init(include_dashboard=False, log_to_driver=False, configure_logging=False)
        worker = ray.remote(num_cpus=self.num_cpus, num_gpus=self.num_gpus, max_restarts=RESTARTS,
                            max_task_retries=RESTARTS)(_Worker)
        actors = [worker.remote(self.factory) for _ in range(self.workers)]
        in_flight: collections.deque = collections.deque()
        try:
            for i, batch in enumerate(batches):
                in_flight.append(actors[i % len(actors)].run.remote(pickle.dumps(batch)))
                if len(in_flight) >= self.window:
                    yield pickle.loads(ray.get(in_flight.popleft()))
            while in_flight:
                yield pickle.loads(ray.get(in_flight.popleft()))
        finally:
            for actor in actors:
                ray.kill(actor)
