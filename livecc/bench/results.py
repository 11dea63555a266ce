"""One writer for every benchmark: a sweep becomes JSON, a Markdown table and a PNG plot, keyed by
device, and ``bench/results/README.md`` is regenerated from all result files."""

from __future__ import annotations

import datetime
import json
import platform
import subprocess
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from ..cache import file_label
from ..kernels import tilings
from .targets import goal_of

__all__ = ["Plot", "Sweep", "device_name", "environment", "on_gpu", "regenerate_readme", "write_sweep"]


def on_gpu() -> bool:
    return torch.cuda.is_available()


def device_name() -> str:
    if on_gpu():
        return torch.cuda.get_device_name()
    return f"cpu-{platform.machine()}-{torch.get_num_threads()}threads"


@dataclass
class Plot:
    """A bar chart of ``y`` over ``x``, one bar per ``series`` value (rows lacking ``y`` are left out)."""

    x: str
    y: str
    series: str
    ylabel: str = ""


@dataclass
class Sweep:
    """A benchmark's rows (one per shape x provider), the columns a reader wants, and the figures
    that answer its performance targets (``headline``: ``{"target", "figure"}`` each; the writer adds
    the target's goal from ``docs/performance.md``)."""

    name: str
    rows: list[dict]
    columns: list[str]
    notes: str = ""
    plot: Plot | None = None
    headline: list[dict] = field(default_factory=list)


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


def write_sweep(sweep: Sweep, out_dir: str | Path, env: dict) -> Path:
    """``OUT/<date>-<device>-<name>.{json,md,png}``; returns the JSON path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"{env['date'][:10]}-{file_label(env['device'])}-{sweep.name}"
    headline = [{**h, "goal": goal_of(h["target"])} for h in sweep.headline]
    payload = {"benchmark": sweep.name, "environment": env, "notes": sweep.notes, "headline": headline,
               "results": sweep.rows, "plot": asdict(sweep.plot) if sweep.plot else None}
    if tilings.chosen():  # what this run's attention tuners chose: ``python -m livecc.kernels.tilings`` ships it
        payload["tilings"] = tilings.chosen()
    stem.with_suffix(".json").write_text(json.dumps(payload, indent=2) + "\n")
    lines = [f"# {sweep.name} on {env['device']}", "", f"torch {env['torch']}, triton {env['triton']}, "
             f"commit {env['commit'][:10]}{' (dirty)' if env['dirty'] else ''}, {env['date']}", ""]
    if sweep.notes:
        lines += [sweep.notes, ""]
    lines += _table(sweep.columns, sweep.rows)
    md = stem.with_suffix(".md")
    md.write_text("\n".join(lines) + "\n")  # before the plot: matplotlib's first import can take many seconds
    if sweep.plot:
        drawn = _plot(sweep, stem.with_suffix(".png"))
        lines += ["", f"![{sweep.name}]({stem.name}.png)" if drawn else f"(no plot: {drawn.reason})"]
        md.write_text("\n".join(lines) + "\n")
    return stem.with_suffix(".json")


def _table(columns: list[str], rows: list[dict]) -> list[str]:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    return lines + ["| " + " | ".join(_fmt(r.get(c)) for c in columns) + " |" for r in rows]


def _fmt(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)


class _Drawn:
    def __init__(self, reason: str = ""):
        self.reason = reason

    def __bool__(self) -> bool:
        return not self.reason


def _plot(sweep: Sweep, path: Path) -> _Drawn:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return _Drawn("matplotlib is not installed")
    p = sweep.plot
    rows = [r for r in sweep.rows if isinstance(r.get(p.y), (int, float))]
    xs = list(dict.fromkeys(str(r[p.x]) for r in rows))
    series = list(dict.fromkeys(str(r[p.series]) for r in rows))
    if not rows:
        return _Drawn(f"no row has {p.y}")
    fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(xs) * max(1, len(series)) / 2), 4))
    width = 0.8 / len(series)
    for k, name in enumerate(series):
        values = {str(r[p.x]): r[p.y] for r in rows if str(r[p.series]) == name}
        ax.bar([i + k * width for i in range(len(xs))], [values.get(x, 0) for x in xs], width, label=name)
    ax.set_xticks([i + width * (len(series) - 1) / 2 for i in range(len(xs))], xs, rotation=20, ha="right")
    ax.set_ylabel(p.ylabel or p.y)
    ax.set_title(f"{sweep.name} ({device_name()})")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return _Drawn()


def regenerate_readme(out_dir: str | Path) -> Path:
    """``OUT/README.md``: for every benchmark and device, the headline figures of its latest run."""
    out = Path(out_dir)
    latest: dict[tuple[str, str], tuple[str, dict, str]] = {}
    for path in sorted(out.glob("*.json")):
        data = json.loads(path.read_text())
        if "benchmark" not in data:
            continue
        key = (data["benchmark"], data["environment"]["device"])
        stamp = data["environment"]["date"]
        if key not in latest or stamp >= latest[key][0]:
            latest[key] = (stamp, data, path.with_suffix(".md").name)
    lines = ["# Benchmark results", "",
             "Written by `livecc bench` (regenerated from the result files here; edit nothing by hand). The",
             "latest run of each benchmark on each device, with the figures that answer its targets",
             "(`docs/performance.md`). Ratios compare providers within one run; absolute figures hold for",
             "the named device only.", "",
             "| benchmark | device | target | goal | figure | file |", "|---|---|---|---|---|---|"]
    for (name, device), (_, data, md) in sorted(latest.items()):
        for h in data.get("headline") or [{"target": "-", "figure": "(no headline)"}]:
            goal = "-" if h["target"] == "-" else goal_of(h["target"])  # today's goal, whenever it ran
            lines.append(f"| {name} | {device} | {h['target']} | {goal} | {h['figure']} | [{md}]({md}) |")
    path = out / "README.md"
    path.write_text("\n".join(lines) + "\n")
    return path
