"""Run a pipeline stage over JSONL inputs: streaming, sharded, resumable, fully accounted.

A stage maps a batch of parsed input lines to one :class:`Outcome` each. The runner reads the
inputs line by line (constant memory), takes every ``num_shards``-th line from ``shard``, and
writes, per shard, the kept lines, a side file of what was dropped (with its reason) or failed
(with its error), a progress file and a report. After each batch the output files are flushed and
the progress file is replaced atomically with the number of lines consumed and the output sizes;
a rerun truncates the outputs to those sizes and continues after those lines, so a killed run
neither repeats nor loses work. Accounting: every input line is kept, dropped (by reason) or
failed (by error) — exactly one of them.

The progress file holds a fingerprint of the inputs (path, size, modification time) and options:
a rerun over other inputs or options is refused rather than mixed with the stored outputs. A rerun
of a complete shard retries its failed items once, replacing their rejects.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from collections import Counter, deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from tqdm import tqdm

from ..records import append_seek_line, iter_lines

__all__ = ["Outcome", "Stage", "StageMismatchError", "StageReport", "run_batch", "run_stage", "shard_paths"]

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

    def remove_failure(self, error: str) -> None:
        """Take back one failed input (before it is retried)."""
        kind = error.split(":", 1)[0]
        self.inputs -= 1
        self.failed[kind] -= 1
        self.failed += Counter()  # drops zero counts

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


class StageMismatchError(ValueError):
    """Stored outputs of a shard written from other inputs or options than this run's."""


def shard_paths(out_dir: str | Path, stage: str, shard: int, num_shards: int) -> dict[str, Path]:
    """A shard's files. Only the outputs match ``STAGE.*.jsonl``, so a glob over one stage's
    outputs feeds the next stage and never picks up a side file."""
    out, tag = Path(out_dir), f"{shard:05d}-of-{num_shards:05d}"
    return {"out": out / f"{stage}.{tag}.jsonl", "side": out / f"{stage}-rejects.{tag}.jsonl",
            "progress": out / f"{stage}.{tag}.progress.json", "report": out / f"{stage}.{tag}.report.json"}


def _other_shardings(out_dir: str | Path, stage: str, num_shards: int) -> dict[int, list[Path]]:
    """The files of ``stage`` in ``out_dir`` written with another number of shards, by that number:
    mixed with this run's, the glob ``STAGE.*.jsonl`` would read both sets."""
    found: dict[int, list[Path]] = {}
    for path in Path(out_dir).glob(f"{stage}*-of-*"):
        m = re.fullmatch(rf"{re.escape(stage)}(?:-rejects)?\.\d+-of-(\d+)\.(?:jsonl|progress\.json|report\.json)",
                         path.name)
        if m and int(m.group(1)) != num_shards:
            found.setdefault(int(m.group(1)), []).append(path)
    return found


def _lines(paths: Iterable[str | Path]) -> Iterator[tuple[int, str, bytes]]:
    """``(index, where, line)`` over the non-empty lines of every input but their seek lines, in order."""
    index = 0
    for path in paths:
        for n, _, line in iter_lines(path):
            yield index, f"{path}:{n}", line
            index += 1


def _parse(line: bytes) -> tuple[object, Outcome | None]:
    """A line's JSON value, or the failure that says why it has none (a line nested too deep for
    the parser is one such failure, not the end of the job)."""
    try:
        return json.loads(line), None
    except (ValueError, RecursionError) as e:
        return None, Outcome.failed(e)


def _outcomes(stage: Stage, batches: Iterator[list]) -> Iterator[list[Outcome]]:
    """Each batch's outcomes, in order. A stage with ``process_batches`` (the Ray engine) takes
    the whole stream of batches and keeps several in flight."""
    if hasattr(stage, "process_batches"):
        return stage.process_batches(batches)
    return (run_batch(stage, items) for items in batches)


def run_batch(stage: Stage, items: list) -> list[Outcome]:
    """The stage's outcomes for ``items``; when a batch raises, each item is run alone and a
    failing one gets its error: one bad item never stops the job."""
    if not items:  # a batch of lines that were all broken
        return []
    try:
        outcomes = stage.process(items)
        if len(outcomes) != len(items):
            raise RuntimeError(f"stage {stage.name} returned {len(outcomes)} outcomes for {len(items)} items")
        return outcomes
    except Exception as e:  # isolate the bad item: one at a time
        if len(items) == 1:
            return [Outcome.failed(e)]
    outcomes = []
    for item in items:
        try:
            outcomes += stage.process([item])
        except Exception as e:
            outcomes.append(Outcome.failed(e))
    return outcomes


def fingerprint(stage: str, inputs: list[str | Path], shard: int, num_shards: int, options: dict) -> str:
    """A digest of what a shard's outputs are made from: the inputs (resolved path, size,
    modification time), the shard and the stage's options."""
    files = [[str(Path(p).resolve()), (st := os.stat(p)).st_size, st.st_mtime_ns] for p in inputs]
    text = json.dumps({"stage": stage, "inputs": files, "shard": [shard, num_shards], "options": options},
                      sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def run_stage(stage: Stage, inputs: list[str | Path], out_dir: str | Path, *, shard: int = 0, num_shards: int = 1,
              batch_size: int = 1, seek_index: bool = True, progress: bool = True, options: dict | None = None,
              overwrite: bool = False) -> StageReport:
    """Run ``stage`` over this shard of ``inputs`` (resuming a previous run); return its report.

    ``options`` (the stage's settings) enter the fingerprint with the inputs; a stored shard with
    another fingerprint raises :class:`StageMismatchError` unless ``overwrite`` starts it afresh."""
    if not 0 <= shard < num_shards:
        raise ValueError(f"shard {shard} is not in [0, {num_shards})")
    for path in inputs:
        if not Path(path).is_file():
            raise FileNotFoundError(f"{path}: input file not found")
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    paths = shard_paths(out_dir, stage.name, shard, num_shards)
    digest = fingerprint(stage.name, inputs, shard, num_shards, options or {})
    other = _other_shardings(out_dir, stage.name, num_shards)
    if other and not overwrite:
        raise StageMismatchError(f"{out_dir}: holds {stage.name} outputs of {', '.join(map(str, sorted(other)))} "
                                 f"shards, not {num_shards}; rerun with --overwrite to replace them")
    if overwrite:
        for path in [*paths.values(), *(p for files in other.values() for p in files)]:
            path.unlink(missing_ok=True)
    state = {"consumed": 0, "out_bytes": 0, "side_bytes": 0, "done": False, "fingerprint": digest,
             "report": StageReport(stage.name, shard, num_shards).to_dict()}
    if paths["progress"].is_file():
        state = json.loads(paths["progress"].read_text())
        if state.get("fingerprint") != digest:
            raise StageMismatchError(f"{paths['out']}: written from other inputs or options than this run's; "
                                     "rerun with --overwrite to start the shard afresh")
    report = StageReport.from_dict(state["report"])
    if state["done"]:
        if sum(report.failed.values()):
            _retry_failures(stage, paths, state, report, seek_index)
        else:
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
                value, outcome = _parse(line)
                batch.append((index, where, line if outcome else value, outcome))
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
            for index, where, value, outcome in batch:
                _record(out, side, report, index, where, value, outcome or next(outcomes))
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
    if state["consumed"] == 0:
        raise ValueError(f"no input lines in {', '.join(map(str, inputs))}")
    _finish(paths, state, report, seek_index)
    return report


def _finish(paths: dict[str, Path], state: dict, report: StageReport, seek_index: bool) -> None:
    if seek_index:
        append_seek_line(paths["out"])
    state.update(done=True, report=report.to_dict())
    _replace(paths["progress"], state)
    _replace(paths["report"], report.to_dict())
    log.info("%s", report.summary())


def _retry_failures(stage: Stage, paths: dict[str, Path], state: dict, report: StageReport, seek_index: bool) -> None:
    """Run a complete shard's failed items once more: their new outcomes replace the failures
    (kept lines go after the stored ones), so a transient error does not need a whole rerun."""
    rows = [json.loads(line) for line in paths["side"].read_bytes().splitlines() if line.strip()]
    failed = [r for r in rows if "error" in r]
    log.info("%s: retrying %d failed items", paths["out"], len(failed))
    retried = []
    for row in failed:
        report.remove_failure(row["error"])
        if "line" in row:  # a line that was not JSON: parsed again from its bytes, kept as bytes if it fails
            line = row["line"].encode()
            value, outcome = _parse(line)
            retried.append((row["index"], row["input"], line if outcome else value, outcome))
        else:
            retried.append((row["index"], row["input"], row["item"], None))
    items = [(index, value) for index, _, value, outcome in retried if outcome is None]
    outcomes = iter([o for batch in _outcomes(stage, iter([items])) for o in batch] if items else [])
    with open(paths["out"], "r+b") as out:
        out.truncate(state["out_bytes"])  # the stored kept lines, without their seek line
        out.seek(0, os.SEEK_END)
        side = paths["side"].with_suffix(".tmp")
        with open(side, "wb") as side_file:
            for row in rows:
                if "error" not in row:
                    side_file.write(json.dumps(row, ensure_ascii=False).encode() + b"\n")
            for index, where, value, outcome in retried:
                _record(out, side_file, report, index, where, value, outcome or next(outcomes))
        state.update(out_bytes=out.tell())
    os.replace(side, paths["side"])
    state.update(side_bytes=paths["side"].stat().st_size)
    _finish(paths, state, report, seek_index)


def _record(out, side, report: StageReport, index: int, where: str, value, outcome: Outcome) -> None:
    """Write one input's outcome. A line that is not JSON is kept as text in its reject, so that a
    retry parses the same bytes again."""
    report.add(outcome)
    for item in outcome.kept:
        out.write(json.dumps(item, ensure_ascii=False).encode() + b"\n")
    for reason, item in outcome.dropped:
        row = {"input": where, "index": index, "reason": reason, "item": item}
        side.write(json.dumps(row, ensure_ascii=False).encode() + b"\n")
    if outcome.error is not None:
        row = {"input": where, "index": index, "error": outcome.error}
        row.update({"line": value.decode(errors="replace")} if isinstance(value, bytes) else {"item": value})
        side.write(json.dumps(row, ensure_ascii=False).encode() + b"\n")


def _replace(path: Path, value: dict) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(value))
    os.replace(tmp, path)
