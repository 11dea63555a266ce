"""LiveSports-3K commentary (CC): events, prompts, commentary generation and win-rate scoring.

Annotation files are JSONL with one event per line, as the dataset's CC split: ``video`` (path
relative to the video root), ``video_id``, ``event_id``, ``begin``, ``end``, and optionally
``event_title``, ``event_asr`` (commentary before the event), ``event_asr_text`` (the human
commentary the judge compares against) and ``class`` (the sport).
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from ..data.paths import video_under
from ..data.video import decode_clip
from ..infer import SessionConfig, StreamingSession, step_through
from ..jsonl import append_row, read_rows, write_rows

__all__ = [
    "CC_PROMPT",
    "Event",
    "cc_generate",
    "comment_on_clip",
    "commentary_prompt",
    "load_events",
    "read_predictions",
    "read_verdicts",
    "win_rate",
]

log = logging.getLogger("livecc.eval")

CC_PROMPT = ("You are an expert video commentator providing real-time, insightful, and engaging commentary "
             "on visual content.\n")


@dataclass
class Event:
    video: str
    video_id: str
    event_id: int
    begin: float
    end: float
    title: str = ""
    previous: str = ""
    human: str = ""
    sport: str = ""

    @property
    def key(self) -> str:
        return f"{self.video_id}_{self.event_id}"


def load_events(path: str | Path) -> list[Event]:
    """Events of an annotation JSONL; a line without the required fields is an error naming it."""
    events = []
    with open(path) as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                d = json.loads(line)
                events.append(Event(
                    video=str(d["video"]), video_id=str(d["video_id"]), event_id=int(d["event_id"]),
                    begin=float(d["begin"]), end=float(d["end"]), title=d.get("event_title") or "",
                    previous=d.get("event_asr") or "", human=d.get("event_asr_text") or "", sport=d.get("class") or "",
                ))
            except (KeyError, TypeError, ValueError, RecursionError) as e:
                raise ValueError(f"{path}: line {n} is not a LiveSports-3K CC event ({type(e).__name__}: {e})") from e
    return events


def commentary_prompt(event: Event, style: str = "instruct") -> str:
    """The reference's evaluation prompt (instruct); for a base model, its pre-training context:
    the title, or the previous commentary when there is one."""
    if style == "base":
        return event.previous or event.title
    prompt = CC_PROMPT
    if event.title:
        prompt += f'This is a video titled "{event.title}".\n'
    if event.previous:
        prompt += f"Here is previous commentary of the video:\n\n{event.previous}\n\n"
        prompt += "Please continue to comment the video."
    return prompt


def read_predictions(path: str | Path, *, repair: bool = False) -> dict[str, dict]:
    """``{video_event_id: row}`` of a prediction JSONL (the reference's caption format); a line
    without ``video_id``, ``event_id`` and ``pred`` is an error naming file and line. ``repair``
    cuts a torn last line (a generation killed mid-write)."""
    return {_event_key(r): r for r in read_rows(path, required=("video_id", "event_id", "pred"), repair=repair)}


def _event_key(row: dict) -> str:
    return f"{row['video_id']}_{row['event_id']}"


def comment_on_clip(session, frames) -> str:
    """One event's commentary, the reference's way: every window's text, the streaming EOS
    stripped, joined, with a closing ``...``."""
    texts = [result.text for result in step_through(session, frames)]
    return " ".join(t.replace(" ...", "") for t in texts if t).strip() + "..."


def cc_generate(events: list[Event], model, processor, video_root: str | Path, out: str | Path, *,
                style: str = "instruct", shard: int = 0, num_shards: int = 1, max_new_tokens: int = 32,
                repetition_penalty: float = 1.15, allow_absolute_paths: bool = False, made_by: dict | None = None,
                overwrite: bool = False) -> Counter:
    """Comment on this shard's events; append each to ``out`` as it finishes (a rerun resumes).

    An event that fails for any reason (missing or undecodable video, bad span, ...) is counted by
    error type and kept in ``out.failed.jsonl`` (one row per event, replaced on every rerun, which
    retries it once), never fatal. What the predictions are made by (``made_by``: the model, and
    the settings here) is kept in ``out.settings.json``: a rerun into ``out`` with other settings
    is refused, so two models' predictions never mix, unless ``overwrite`` starts afresh."""
    out = Path(out)
    failed_path = out.with_suffix(".failed.jsonl")
    settings = {**(made_by or {}), "style": style, "shard": [shard, num_shards], "max_new_tokens": max_new_tokens,
                "repetition_penalty": repetition_penalty, "video_root": str(Path(video_root).resolve())}
    _claim(out, settings, overwrite, (failed_path,))
    done = set(read_predictions(out, repair=True))
    mine = [e for i, e in enumerate(events) if i % num_shards == shard]
    todo = [e for e in mine if e.key not in done]
    failures = {r["video_event_id"]: r for r in read_rows(failed_path, required=("video_event_id", "error"))}
    counts = Counter(total=len(mine), skipped=len(mine) - len(todo), retried=sum(e.key in failures for e in todo))
    errors: Counter = Counter()
    started = time.perf_counter()
    with open(out, "a") as sink:
        for event in tqdm(todo, desc=f"cc-generate shard {shard}", unit="event"):
            try:
                path = video_under(video_root, event.video, source=event.key, allow_absolute=allow_absolute_paths)
                config = SessionConfig.for_model(model, query=commentary_prompt(event, style),
                                                 max_new_tokens=max_new_tokens, repetition_penalty=repetition_penalty)
                clip = decode_clip(path, event.begin, event.end, resize=False, fps=config.plan.fps)
                session = StreamingSession(model, processor, config)
                try:
                    pred = comment_on_clip(session, clip.frames)
                finally:
                    session.close()
            except Exception as e:  # the event's boundary: counted, never the end of the run
                errors[type(e).__name__] += 1
                failures[event.key] = {"video_event_id": event.key, "error": f"{type(e).__name__}: {e}"}
                write_rows(failed_path, list(failures.values()))
                log.warning("%s: %s", event.key, e)
                continue
            append_row(sink, {"video_id": event.video_id, "event_id": event.event_id, "begin": event.begin,
                              "end": event.end, "pred": pred})
            if failures.pop(event.key, None) is not None:
                write_rows(failed_path, list(failures.values()))
            counts["generated"] += 1
    counts["failed"] = sum(errors.values())
    counts.update({f"failed_{k}": v for k, v in errors.items()})
    counts["seconds"] = round(time.perf_counter() - started, 1)
    return counts


def _claim(out: Path, settings: dict, overwrite: bool, side: tuple[Path, ...]) -> None:
    """Make ``out`` this run's: a new file, or one made with the same ``settings``."""
    recorded = out.with_suffix(".settings.json")
    if overwrite:
        for path in (out, recorded, *side):
            path.unlink(missing_ok=True)
    if recorded.is_file():
        before = json.loads(recorded.read_text())
        if before != json.loads(json.dumps(settings)):
            changed = sorted(k for k in {*before, *settings} if before.get(k) != settings.get(k))
            raise ValueError(f"{out}: made with other settings ({', '.join(changed)} differ); use another --out, "
                             "or --overwrite to start afresh")
    elif out.is_file() and out.stat().st_size:
        raise ValueError(f"{out}: predictions of unknown settings; use another --out, or --overwrite")
    out.parent.mkdir(parents=True, exist_ok=True)
    recorded.write_text(json.dumps(settings, indent=1) + "\n")


def win_rate(verdicts: Iterator[dict] | list[dict], model_id: str) -> tuple[float, int]:
    """Wins over ``2N`` judgements in percent (ties count as non-wins), and ``N``."""
    wins, n = 0, 0
    for v in verdicts:
        wins += (v["ab_winner"] == model_id) + (v["ba_winner"] == model_id)
        n += 1
    return (100.0 * wins / (2 * n) if n else float("nan")), n


def read_verdicts(path: str | Path) -> list[dict]:
    """A verdict JSONL (the reference's judge format); a line without ``ab_winner`` and
    ``ba_winner`` is an error naming file and line."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"{path}: verdict file not found")
    return read_rows(path, required=("ab_winner", "ba_winner"))
