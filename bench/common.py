"""Shared benchmark plumbing: timing, memory, environment, result files."""

from __future__ import annotations

import datetime
import json
import platform
import statistics
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results"


def on_gpu() -> bool:
    return torch.cuda.is_available()


def device_name() -> str:
    if on_gpu():
        return torch.cuda.get_device_name()
    return f"cpu-{platform.machine()}-{torch.get_num_threads()}threads"


def environment() -> dict:
    """Device, driver, library versions and commit: what a result file must carry."""
    import transformers
    import triton

    env = {
        "device": device_name(),
        "torch": torch.__version__,
        "triton": triton.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "commit": _git("rev-parse", "HEAD"),
        "dirty": bool(_git("status", "--porcelain", "--untracked-files=no")),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    if on_gpu():
        env["cuda"] = torch.version.cuda
        try:
            import pynvml

            pynvml.nvmlInit()
            env["driver"] = pynvml.nvmlSystemGetDriverVersion()
        except Exception as e:  # telemetry is optional; say why it is missing
            env["driver"] = f"unavailable ({type(e).__name__})"
    return env


def _git(*args: str) -> str:
    try:
        return subprocess.run(["git", *args], capture_output=True, text=True, check=True,
                              cwd=Path(__file__).parent).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def median_ms(fn: Callable[[], object], warmup: int = 3, rep: int = 10) -> float:
    """Median wall time of ``fn``: ``triton.testing.do_bench`` on GPU, perf_counter on CPU."""
    if on_gpu():
        from triton.testing import do_bench

        return float(do_bench(fn, warmup=25, rep=100, return_mode="median"))
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(rep):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def peak_extra_mb(fn: Callable[[], object]) -> float | None:
    """Peak memory ``fn`` allocates beyond what was live before it (GPU only)."""
    if not on_gpu():
        return None
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2**20


def write_results(name: str, env: dict, rows: list[dict], columns: list[str], notes: str = "") -> Path:
    """``bench/results/<date>-<device>-<name>.json`` and a Markdown table beside it."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    stem = f"{env['date'][:10]}-{_slug(env['device'])}-{name}"
    json_path = RESULTS / f"{stem}.json"
    json_path.write_text(json.dumps({"benchmark": name, "environment": env, "results": rows}, indent=2) + "\n")
    lines = [f"# {name} on {env['device']}", "", f"torch {env['torch']}, triton {env['triton']}, "
             f"commit {env['commit'][:10]}{' (dirty)' if env['dirty'] else ''}, {env['date']}", ""]
    if notes:
        lines += [notes, ""]
    lines += ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_fmt(r.get(c)) for c in columns) + " |" for r in rows]
    (RESULTS / f"{stem}.md").write_text("\n".join(lines) + "\n")
    return json_path


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in text.lower()).strip("-")


def _fmt(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)
