"""The LiveSports-3K CC judge: an LLM compares two commentaries with the human one, twice (A/B and
B/A), at temperature 0 and seed 42; verdicts are cached so a rerun only asks what is missing."""

from __future__ import annotations

import hashlib
import json
import re
import threading
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

from tqdm import tqdm

from ..chat import ChatClient, ChatError
from ..jsonl import append_row, read_rows
from .livesports import Event, win_rate

__all__ = ["judge_prompt", "parse_verdict", "run_judge"]


def judge_prompt(a: str, b: str, human: str) -> str:
    """The reference's judge prompt, word for word."""
    return (
        "You are an expert in video commentary. "
        "Your task is to review two commentaries (Commentary A and Commentary B), and select the one that better "
        "aligns with the human commentary. "
        "You should consider the criteria:\n"
        "1. Semantic Alignment: The commentary should convey the same meaning, details, and key points as the human "
        "commentary.\n"
        "If the above criteria is not enough to judge, then consider:\n"
        "2. Stylistic Consistency: The commentary should maintain a tone, word choice, and structure similar to the "
        "human commentary.\n"
        f"\n---Commentary A---\n{a}\n----------\n"
        f"\n---Commentary B---\n{b}\n----------\n"
        f"\n---Human Commentary---\n{human}\n----------\n"
        '\nYour response should be "Commentary A is better aligned with the human commentary" or '
        '"Commentary B is better aligned with the human commentary".\n'
    )


_BETTER = re.compile(r"commentary\s*\**\s*([ab])\b\**\s+(?:is|was)\s+(?:better|more)", re.IGNORECASE)
_CHOICE = re.compile(r"\b(?:choose|select|prefer|pick|answer:?)\s*\**\s*(?:commentary\s*)?\**([ab])\b", re.IGNORECASE)
_NAMED = re.compile(r"commentary\s*\**\s*([ab])\b", re.IGNORECASE)


def parse_verdict(text: str) -> str:
    """``"A"``, ``"B"`` or ``"tie"``: an explicit "Commentary X is better", else an explicit choice,
    else the only commentary the answer names."""
    for pattern in (_BETTER, _CHOICE):
        found = {m.upper() for m in pattern.findall(text)}
        if len(found) == 1:
            return found.pop()
    named = {m.upper() for m in _NAMED.findall(text)}
    return named.pop() if len(named) == 1 else "tie"


class _Cache:
    """Verdicts keyed by event, order and the texts judged; appended as they arrive."""

    def __init__(self, path: Path):
        self.path, self.lock = path, threading.Lock()
        # A judge killed mid-write leaves a torn last line: cut it (that verdict is asked again).
        self.entries = {row["key"]: row["verdict"] for row in read_rows(path, required=("key", "verdict"), repair=True)}

    def put(self, key: str, verdict: str) -> None:
        with self.lock:
            self.entries[key] = verdict
            with open(self.path, "a") as f:
                append_row(f, {"key": key, "verdict": verdict})


def _key(event: Event, order: str, a: str, b: str) -> str:
    digest = hashlib.sha256("\x00".join((a, b, event.human)).encode()).hexdigest()[:16]
    return f"{event.key}|{order}|{digest}"


def run_judge(events: list[Event], predictions: dict[str, str], baseline: dict[str, str], model_id: str,
              baseline_id: str, client: ChatClient, out: str | Path, *, workers: int = 16) -> dict:
    """Judge every event both ways; write verdicts in the reference's format; return the scores."""
    out = Path(out)
    cache = _Cache(out.with_suffix(".cache.jsonl"))
    missing = [e.key for e in events if e.key not in predictions or e.key not in baseline or not e.human]
    if missing:
        raise ValueError(f"{len(missing)} events lack a prediction, a baseline or human commentary, e.g. {missing[:3]}")
    jobs = []
    for e in events:
        ours, theirs = predictions[e.key], baseline[e.key]
        jobs += [(e, "ab", ours, theirs), (e, "ba", theirs, ours)]
    todo = [j for j in jobs if _key(j[0], j[1], j[2], j[3]) not in cache.entries]
    failures = Counter()

    def ask(job):
        e, order, a, b = job
        reply = client.complete(judge_prompt(a, b, e.human), temperature=0, seed=42)
        cache.put(_key(e, order, a, b), parse_verdict(reply))

    with ThreadPoolExecutor(max_workers=workers) as pool:
        futures = [pool.submit(ask, j) for j in todo]
        for f in tqdm(as_completed(futures), total=len(futures), desc=f"judge {model_id} vs {baseline_id}"):
            try:
                f.result()
            except ChatError as err:
                failures[str(err)[:120]] += 1
    if failures:
        raise ChatError(f"{sum(failures.values())} judgements failed (rerun to retry them): {dict(failures)}")

    names = {"ab": {"A": model_id, "B": baseline_id}, "ba": {"A": baseline_id, "B": model_id}}
    verdicts, per_sport = [], defaultdict(list)
    for e in events:
        row = {"video_event_id": e.key}
        for order in ("ab", "ba"):
            a, b = (predictions[e.key], baseline[e.key]) if order == "ab" else (baseline[e.key], predictions[e.key])
            row[f"{order}_winner"] = names[order].get(cache.entries[_key(e, order, a, b)], "tie")
        verdicts.append(row)
        per_sport[e.sport or "unknown"].append(row)
    with open(out, "w") as f:
        for row in verdicts:
            f.write(json.dumps(row) + "\n")
    rate, n = win_rate(verdicts, model_id)
    return {"win_rate": rate, "events": n, "asked": len(todo), "cached": len(jobs) - len(todo),
            "per_sport": {s: win_rate(rows, model_id)[0] for s, rows in sorted(per_sport.items())}}
