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

__all__ = [
    "CC_PROMPT",
    "Event",
    "cc_generate",
    "commentary_prompt",
    "load_events",
    "read_predictions",
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
            except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
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


def read_predictions(path: str | Path) -> dict[str, dict]:
    """``{video_event_id: row}`` of a prediction JSONL (the reference's caption format)."""
    rows = {}
    path = Path(path)
    if not path.is_file():
        return rows
    for line in path.read_text().splitlines():
        if line.strip():
            row = json.loads(line)
            rows[f"{row['video_id']}_{row['event_id']}"] = row
    return rows


def cc_generate(events: list[Event], model, processor, video_root: str | Path, out: str | Path, *,
                style: str = "instruct", shard: int = 0, num_shards: int = 1, max_new_tokens: int = 32,
                repetition_penalty: float = 1.15) -> Counter:
    """Comment on this shard's events; append each to ``out`` as it finishes (a rerun resumes).

    A missing or undecodable video is counted and written to ``out.failed.jsonl``, not fatal.
    """
    from ..data.video import VideoError, decode_clip
    from ..infer import StreamingSession

    out = Path(out)
    done = set(read_predictions(out))
    mine = [e for i, e in enumerate(events) if i % num_shards == shard]
    counts = Counter(total=len(mine), skipped=sum(e.key in done for e in mine))
    started = time.perf_counter()
    with open(out, "a") as sink, open(out.with_suffix(".failed.jsonl"), "a") as failed:
        for event in tqdm([e for e in mine if e.key not in done], desc=f"cc-generate shard {shard}", unit="event"):
            try:
                clip = decode_clip(Path(video_root) / event.video, event.begin, event.end, resize=False)
            except VideoError as e:
                counts["failed"] += 1
                failed.write(json.dumps({"video_event_id": event.key, "error": str(e)}) + "\n")
                log.warning("%s: %s", event.key, e)
                continue
            session = StreamingSession(model, processor, query=commentary_prompt(event, style),
                                       max_new_tokens=max_new_tokens, repetition_penalty=repetition_penalty)
            texts, frames = [], clip.frames
            while len(frames) >= session.frames_needed:
                n = session.frames_needed
                texts.append(session.step(frames[:n]).text)
                frames = frames[n:]
            pred = " ".join(t.replace(" ...", "") for t in texts if t).strip() + "..."
            sink.write(json.dumps({"video_id": event.video_id, "event_id": event.event_id, "begin": event.begin,
                                   "end": event.end, "pred": pred}) + "\n")
            sink.flush()
            counts["generated"] += 1
    counts["seconds"] = round(time.perf_counter() - started, 1)
    return counts


def win_rate(verdicts: Iterator[dict] | list[dict], model_id: str) -> tuple[float, int]:
    """Wins over ``2N`` judgements in percent (ties count as non-wins), and ``N``."""
    wins, n = 0, 0
    for v in verdicts:
        wins += (v["ab_winner"] == model_id) + (v["ba_winner"] == model_id)
        n += 1
    return (100.0 * wins / (2 * n) if n else float("nan")), n
