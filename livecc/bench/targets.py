"""The performance targets, read from the one table that states them (``docs/performance.md``,
section "Targets"): a headline's goal is the table's goal for the id its target starts with."""

from __future__ import annotations

import functools
from pathlib import Path

__all__ = ["DOC", "goal_of", "read_targets"]

DOC = Path(__file__).resolve().parents[2] / "docs" / "performance.md"


@functools.cache
def read_targets(path: Path = DOC) -> dict[str, str]:
    """``id -> goal`` of the table under ``## Targets``; empty where the document is absent (an
    installed package carries no docs)."""
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        return {}
    start = lines.index("## Targets")
    targets = {}
    for line in lines[start + 1:]:
        if line.startswith("## "):
            break
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and len(cells) == 3 and cells[0] not in ("id", "---"):
            targets[cells[0]] = cells[2]
    if not targets:
        raise ValueError(f"{path}: no rows in the table under '## Targets'")
    return targets


def goal_of(target: str) -> str:
    """The goal of a headline target such as ``"P1 llm-16k"`` (its first word is the table's id). An
    id the table lacks is said so in the goal, never an error: a run's figures are always written."""
    targets = read_targets()
    if not targets:
        return "see docs/performance.md"
    key = target.split()[0]
    return targets.get(key, f"(no target {key!r} in docs/performance.md)")
