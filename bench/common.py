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
SHAPES = {  # hidden, layers, q heads, kv heads, MLP, vocab (PERF.md)
    "qwen2vl-2b": (1536, 28, 12, 2, 8960, 151936),
    "qwen2vl-7b": (3584, 28, 28, 4, 18944, 152064),
}
PEAK, HBM = 989e12, 3.35e12  # H100 SXM dense bf16 FLOP/s and HBM bytes/s (datasheet, PERF.md)


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


def random_qwen2vl(shape: str, attn: str):
    """A Qwen2-VL of ``shape`` (the real ViT) with random bf16 weights, built on the GPU."""
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration

    h, n, hq, hkv, mlp, vocab = SHAPES[shape]
    cfg = Qwen2VLConfig(
        text_config=dict(vocab_size=vocab, hidden_size=h, intermediate_size=mlp, num_hidden_layers=n,
                         num_attention_heads=hq, num_key_value_heads=hkv,
                         rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": [16, 24, 24]}),
        vision_config=dict(depth=32, embed_dim=1280, num_heads=16, hidden_size=h))
    cfg._attn_implementation = attn
    with torch.device("cuda"):
        return Qwen2VLForConditionalGeneration(cfg).to(torch.bfloat16)


def reference_attention() -> str:
    """The reference stack's attention: FlashAttention-2 when installed, else SDPA."""
    try:
        import flash_attn  # noqa: F401
    except ImportError:
        return "sdpa"
    return "flash_attention_2"


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
