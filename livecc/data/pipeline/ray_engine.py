"""Run a pipeline stage's batches on Ray Data, for inputs that outgrow one machine.

The driver still reads the inputs, shards, writes and records progress exactly as
:func:`run_stage` does (so outputs, side files, reports and resumption are the same); only the
stage's work moves to a pool of Ray actors, each building its own stage from ``factory`` (models
load once per actor and are never pickled). Batches go out in windows of ``window``, one Ray Data
job each (``preserve_order``), so the driver's memory stays bounded; each window starts its actors
afresh, so a model-backed stage should use a window large enough to amortise its load. ``ray.init``
joins the cluster named by ``RAY_ADDRESS`` when set, else starts a local one.
"""

from __future__ import annotations

import pickle
from collections.abc import Callable, Iterator
from itertools import islice

from .runner import Outcome, Stage, run_batch

__all__ = ["RayStage"]


class _Worker:
    """A Ray Data actor: one stage, many batches (each row is one pickled batch of items)."""

    def __init__(self, factory: Callable[[], Stage]):
        self.stage = factory()

    def __call__(self, rows):
        return {"outcomes": [pickle.dumps(run_batch(self.stage, pickle.loads(b))) for b in rows["items"]]}


class RayStage:
    def __init__(self, name: str, factory: Callable[[], Stage], *, window: int = 64, workers: int = 2,
                 num_cpus: float = 1.0, num_gpus: float = 0.0):
        self.name, self.factory = name, factory
        self.window, self.workers, self.num_cpus, self.num_gpus = window, workers, num_cpus, num_gpus

    def process_batches(self, batches: Iterator[list]) -> Iterator[list[Outcome]]:
        import ray
        import ray.data

        if not ray.is_initialized():
            ray.init(include_dashboard=False, log_to_driver=False, configure_logging=False)
        context = ray.data.DataContext.get_current()
        context.execution_options.preserve_order = True
        context.enable_progress_bars = False
        while window := list(islice(batches, self.window)):
            dataset = ray.data.from_items([{"items": pickle.dumps(items)} for items in window]).map_batches(
                _Worker, fn_constructor_args=(self.factory,), batch_size=1, batch_format="numpy",
                compute=ray.data.ActorPoolStrategy(size=min(self.workers, len(window))),
                num_cpus=self.num_cpus, num_gpus=self.num_gpus)
            for row in dataset.iter_rows():
                yield pickle.loads(row["outcomes"])
