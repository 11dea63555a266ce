"""Run a pipeline stage over JSONL inputs: streaming, sharded, resumable, fully accounted.

A stage maps a batch of parsed input lines to one :class:`Outcome` each. The runner reads the
inputs line by line (constant memory), takes every ``num_shards``-th line from ``shard``, and
writes, per shard, the kept lines, a side file of what was dropped (with its reason) or failed
(with its error), a progress file and a report. After each batch the output files are flushed and
the progress file is replaced atomically with the number of lines consumed and the output sizes;
a rerun truncates the outputs to those sizes and continues after those lines, so a killed run
neither repeats nor loses work. Accounting: every input line is kept, dropped (by reason) or
failed (by error) — exactly one of them.
"""

from __future__ import annotations

import json
import logging
import os
from collections import Counter, deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from tqdm import tqdm

from ..records import append_seek_line, is_seek_line

__all__ = ["Outcome", "Stage", "StageReport", "run_batch", "run_stage", "shard_paths"]

log = logging.getLogger("livecc.data")


@dataclass
class Outcome:
    """What became of one input: output lines, dropped items ``(reason, item)``, or an error."""

    kept: list = field(default_factory=list)
    dropped: list[tuple[str, object]] = field(default_factory=list)
    error: str | None = None  # "ErrorType: message"

    @classmethod
    def failed(cls, e: BaseException) -> Outcome:
        return cls(error=f"{type(e).__name__}: {e}")


class Stage(Protocol):
    name: str

    def process(self, items: list[tuple[int, object]]) -> list[Outcome]:
        """One outcome per ``(input index, parsed line)``, in order. An exception fails the batch,
        which is then retried item by item."""
        ...


@dataclass
class StageReport:
    stage: str
    shard: int = 0
    num_shards: int = 1
    inputs: int = 0
    kept: int = 0
    dropped: Counter = field(default_factory=Counter)  # inputs with nothing kept, by first reason
    failed: Counter = field(default_factory=Counter)  # by error type
    outputs: int = 0  # lines written (a transcript can give many clips)
    dropped_items: Counter = field(default_factory=Counter)  # every dropped item, by reason

    def add(self, outcome: Outcome) -> None:
        self.inputs += 1
        if outcome.error is not None:
            self.failed[outcome.error.split(":", 1)[0]] += 1
        elif outcome.kept:
            self.kept += 1
        else:
            self.dropped[outcome.dropped[0][0] if outcome.dropped else "no_output"] += 1
        self.outputs += len(outcome.kept)
        self.dropped_items.update(reason for reason, _ in outcome.dropped)

    @property
    def balanced(self) -> bool:
        return self.inputs == self.kept + sum(self.dropped.values()) + sum(self.failed.values())

    def to_dict(self) -> dict:
        return {"stage": self.stage, "shard": self.shard, "num_shards": self.num_shards, "inputs": self.inputs,
                "kept": self.kept, "dropped": dict(self.dropped), "failed": dict(self.failed),
                "outputs": self.outputs, "dropped_items": dict(self.dropped_items)}

    @classmethod
    def from_dict(cls, d: dict) -> StageReport:
        return cls(d["stage"], d["shard"], d["num_shards"], d["inputs"], d["kept"], Counter(d["dropped"]),
                   Counter(d["failed"]), d["outputs"], Counter(d["dropped_items"]))

    def summary(self) -> str:
        def counts(c: Counter) -> str:
            return ", ".join(f"{k} {v}" for k, v in c.most_common()) or "none"

        return (f"{self.stage} shard {self.shard}/{self.num_shards}: {self.inputs} in = {self.kept} kept + "
                f"{sum(self.dropped.values())} dropped ({counts(self.dropped)}) + {sum(self.failed.values())} "
                f"failed ({counts(self.failed)}); {self.outputs} lines written")


def shard_paths(out_dir: str | Path, stage: str, shard: int, num_shards: int) -> dict[str, Path]:
    stem = Path(out_dir) / f"{stage}.{shard:05d}-of-{num_shards:05d}"
    return {"out": stem.with_suffix(".jsonl"), "side": Path(f"{stem}.rejects.jsonl"),
            "progress": Path(f"{stem}.progress.json"), "report": Path(f"{stem}.report.json")}


def _lines(paths: Iterable[str | Path]) -> Iterator[tuple[int, str, bytes]]:
    """``(index, where, line)`` over the non-empty lines of every input, in order."""
    index = 0
    for path in paths:
        with open(path, "rb") as f:
            for n, line in enumerate(f, 1):
                if line.strip():
                    yield index, f"{path}:{n}", line
                    index += 1


def _outcomes(stage: Stage, batches: Iterator[list]) -> Iterator[list[Outcome]]:
    """Each batch's outcomes, in order. A stage with ``process_batches`` (the Ray engine) takes
    the whole stream of batches and keeps several in flight."""
    if hasattr(stage, "process_batches"):
        return stage.process_batches(batches)
    return (run_batch(stage, items) for items in batches)


def run_batch(stage: Stage, items: list) -> list[Outcome]:
    """The stage's outcomes for ``items``; when a batch of several raises, each item is retried
    alone and a failing one gets its error."""
    if not items:  # a batch of lines that were all broken or seek lines
        return []
    try:
        outcomes = stage.process(items)
        if len(outcomes) != len(items):
            raise RuntimeError(f"stage {stage.name} returned {len(outcomes)} outcomes for {len(items)} items")
        return outcomes
    except Exception:  # isolate the bad item: one at a time
        if len(items) == 1:
            raise
    outcomes = []
    for item in items:
        try:
            outcomes += stage.process([item])
        except Exception as e:
            outcomes.append(Outcome.failed(e))
    return outcomes


def run_stage(stage: Stage, inputs: list[str | Path], out_dir: str | Path, *, shard: int = 0, num_shards: int = 1,
              batch_size: int = 1, seek_index: bool = True, progress: bool = True) -> StageReport:
    """Run ``stage`` over this shard of ``inputs`` (resuming a previous run); return its report."""
    if not 0 <= shard < num_shards:
        raise ValueError(f"shard {shard} is not in [0, {num_shards})")
    for path in inputs:
        if not Path(path).is_file():
            raise FileNotFoundError(f"{path}: input file not found")
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    paths = shard_paths(out_dir, stage.name, shard, num_shards)
    state = {"consumed": 0, "out_bytes": 0, "side_bytes": 0, "done": False,
             "report": StageReport(stage.name, shard, num_shards).to_dict()}
    if paths["progress"].is_file():
        state = json.loads(paths["progress"].read_text())
    report = StageReport.from_dict(state["report"])
    if state["done"]:
        log.info("%s: already complete", paths["out"])
        return report
    if state["consumed"]:
        log.info("%s: resuming after %d input lines", paths["out"], state["consumed"])

    out, side = open(paths["out"], "ab"), open(paths["side"], "ab")
    out.truncate(state["out_bytes"])
    side.truncate(state["side_bytes"])
    bar = tqdm(desc=f"{stage.name} {shard}/{num_shards}", unit="line", disable=not progress,
               initial=state["consumed"])
    # Batches wait here, with the lines they consumed, until their outcomes come back in order.
    pending: deque[tuple[int, list[tuple[int, str, object, Outcome | None]]]] = deque()

    def batches() -> Iterator[list[tuple[int, object]]]:
        batch, consumed = [], state["consumed"]  # a line that is not JSON comes with its outcome
        for index, where, line in _lines(inputs):
            if index < state["consumed"]:
                continue
            consumed = index + 1
            if index % num_shards == shard:
                try:
                    value = json.loads(line)
                except json.JSONDecodeError as e:
                    batch.append((index, where, None, Outcome.failed(e)))
                else:
                    if not is_seek_line(value):
                        batch.append((index, where, value, None))
            if len(batch) >= batch_size:
                pending.append((consumed, batch))
                yield [(i, value) for i, _, value, outcome in batch if outcome is None]
                batch = []
        pending.append((consumed, batch))  # the last, possibly empty, batch records the lines read
        yield [(i, value) for i, _, value, outcome in batch if outcome is None]

    try:
        for outcomes in _outcomes(stage, batches()):
            consumed, batch = pending.popleft()
            outcomes = iter(outcomes)
            for _, where, value, outcome in batch:
                _record(out, side, report, where, value, outcome or next(outcomes))
            out.flush()
            side.flush()
            os.fsync(out.fileno())
            os.fsync(side.fileno())
            bar.update(consumed - state["consumed"])
            state.update(consumed=consumed, out_bytes=out.tell(), side_bytes=side.tell(), report=report.to_dict())
            _replace(paths["progress"], state)
    finally:
        out.close()
        side.close()
        bar.close()
    if seek_index:
        append_seek_line(paths["out"])
    state.update(done=True, report=report.to_dict())
    _replace(paths["progress"], state)
    _replace(paths["report"], report.to_dict())
    log.info("%s", report.summary())
    return report


def _record(out, side, report: StageReport, where: str, value, outcome: Outcome) -> None:
    report.add(outcome)
    for item in outcome.kept:
        out.write(json.dumps(item, ensure_ascii=False).encode() + b"\n")
    for reason, item in outcome.dropped:
        side.write(json.dumps({"input": where, "reason": reason, "item": item}, ensure_ascii=False).encode() + b"\n")
    if outcome.error is not None:
        side.write(json.dumps({"input": where, "error": outcome.error, "item": value}, ensure_ascii=False).encode()
                   + b"\n")


def _replace(path: Path, value: dict) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(value))
    os.replace(tmp, path)
