"""The attention tilings the tuners chose on a GPU, recorded and shipped, so that a GPU with a
shipped table starts without tuning.

On a GPU the attention tuners time every tiling of their space the first time a key (head dim,
causality, GQA group, paging, dtype) occurs: with the compiles, seconds on the path to a first
window. A run records what its tuners chose (:func:`chosen`; the benchmarks put it into their
result files); ``python -m livecc.kernels.tilings RESULT.json ...`` merges such records into
``livecc/kernels/tuned/<gpu>.json``, which the package ships. A launch whose key the table of
its GPU holds runs that tiling at once (:func:`shipped`); any other key is tuned as before.
"""

from __future__ import annotations

import argparse
import json
import sys
from functools import lru_cache
from pathlib import Path

from ..cache import file_label

__all__ = ["chosen", "note", "shipped", "table_path"]

TUNED = Path(__file__).parent / "tuned"
_chosen: dict[tuple, tuple] = {}  # this process's tuners' choices: (kernel, tma, key) -> tiling


def table_path(name: str, folder: Path | None = None) -> Path:
    """The table of the GPU called ``name`` in ``folder`` (the shipped ones by default)."""
    return (folder or TUNED) / f"{file_label(name)}.json"


def note(kernel: str, tma: bool, key: tuple, tiling: tuple) -> None:
    """Record that the tuner of ``kernel`` (``tma``: its descriptor tuner) chose ``tiling`` (a
    ``TileConfig`` as a tuple) for ``key``."""
    _chosen[kernel, tma, key] = tiling  # on every tuned launch: kept to one dictionary store


def chosen() -> list[dict]:
    """What this process's tuners chose, one entry per tuner and key."""
    return [{"kernel": kernel, "tma_tuner": tma, "key": list(key), "tiling": list(tiling)}
            for (kernel, tma, key), tiling in _chosen.items()]


@lru_cache(maxsize=8)
def _table(path: Path) -> dict[tuple, tuple]:
    if not path.exists():
        return {}
    try:
        entries = json.loads(path.read_text())["tilings"]
        return {(e["kernel"], e["tma_tuner"], tuple(e["key"])): tuple(e["tiling"]) for e in entries}
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{path}: not a table of tilings ({type(e).__name__}: {e})") from e


def shipped(gpu: str, kernel: str, tma: bool, key: tuple, folder: Path | None = None) -> tuple | None:
    """The tiling shipped for ``key`` on the GPU called ``gpu``, or None (then the tuner times them)."""
    return _table(table_path(gpu, folder)).get((kernel, tma, tuple(key)))


def merge(results: list[Path], folder: Path | None = None) -> list[str]:
    """Merge the tilings recorded in benchmark result files into each GPU's shipped table; the
    first file naming a key decides it. Returns what it did, a line each (conflicts included)."""
    said, tables = [], {}
    for path in results:
        payload = json.loads(path.read_text())
        entries = payload.get("tilings") or []
        if not entries:
            said.append(f"{path}: no tilings recorded (a CPU run, or no attention tuned)")
            continue
        env = payload["environment"]
        out = table_path(env["device"], folder)
        if out not in tables:
            old = json.loads(out.read_text())["tilings"] if out.exists() else []
            tables[out] = ({"gpu": env["device"], "triton": env["triton"], "torch": env["torch"]},
                           {(e["kernel"], e["tma_tuner"], tuple(e["key"])): e for e in old}, set())
        head, merged, fresh = tables[out]
        for e in entries:
            k = (e["kernel"], e["tma_tuner"], tuple(e["key"]))
            if k in fresh and merged[k]["tiling"] != e["tiling"]:
                said.append(f"{path}: {k} chose {e['tiling']}, kept {merged[k]['tiling']} from an earlier file")
                continue
            merged[k] = {**e, "source": path.name}
            fresh.add(k)
    for out, (head, merged, _) in tables.items():
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({**head, "tilings": sorted(merged.values(), key=lambda e: json.dumps(e["key"]))
                                   }, indent=1) + "\n")
        said.append(f"wrote {out} ({len(merged)} tilings)")
    _table.cache_clear()
    return said


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m livecc.kernels.tilings",
                                     description="Ship the attention tilings recorded in benchmark result files.")
    parser.add_argument("results", nargs="+", type=Path, help="result .json files of a GPU run (first wins)")
    parser.add_argument("--into", type=Path, default=None, help=f"the folder of shipped tables (default {TUNED})")
    args = parser.parse_args(argv)
    missing = [str(p) for p in args.results if not p.is_file()]
    if missing:
        parser.error(f"no such result file: {', '.join(missing)}")
    said = merge(args.results, args.into)
    print("\n".join(said))
    return 0 if any(s.startswith("wrote") for s in said) else 1


if __name__ == "__main__":
    sys.exit(main())
