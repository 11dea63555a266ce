"""P9: cold start, from a new process to a stream's first commentary, in phases.

Each start is a child process (``python -m livecc.bench.cold_start``) timed from just before the
parent launches it: ``import_s`` (the interpreter, torch and livecc's streaming modules),
``model_s`` (the model built: on a GPU the 7B Qwen2-VL shape with random bf16 weights, made on the
device, so reading a checkpoint from disk is not in it; on a CPU the tiny model), ``compile_s``
(waiting for the kernels of the windows, compiled in parallel processes since the model began to
be made, as ``livecc stream`` does; GPU only), ``graphs_s`` (the pool and the prefill and decode
graphs), ``first_window_s`` (the first window stepped to its text: the ViT's graph captured and its
tuner run for the frame size) and ``total_s``.

``cold``: an empty Triton cache and livecc cache (a fresh machine); ``warm``: the same caches
again (a restart on the same machine).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

__all__ = ["cold_starts", "main"]

PHASES = ("import_s", "model_s", "compile_s", "graphs_s", "first_window_s")


def cold_starts(runs: tuple[str, ...] = ("cold", "warm"), timeout: float = 900) -> list[dict]:
    """One row per start of ``runs`` (``cold`` first empties the caches), in a shared temporary
    cache folder; a start that fails raises with its output."""
    rows = []
    with tempfile.TemporaryDirectory(prefix="livecc-cold-start-") as caches:
        env = {**os.environ, "TRITON_CACHE_DIR": os.path.join(caches, "triton"),
               "LIVECC_CACHE": os.path.join(caches, "livecc")}
        env.pop("TRITON_INTERPRET", None)  # the kernels as a user's process runs them
        for run in runs:
            if run not in ("cold", "warm"):
                raise ValueError(f"cold start runs are cold and warm, not {run!r}")
            start = time.time()
            done = subprocess.run([sys.executable, "-m", "livecc.bench.cold_start", "--started", repr(start)],
                                  env=env, capture_output=True, text=True, timeout=timeout)
            if done.returncode != 0:
                raise RuntimeError(f"the {run} start failed (exit {done.returncode}):\n{done.stdout[-2000:]}"
                                   f"{done.stderr[-3000:]}")
            rows.append({"provider": "cold start", "run": run, **json.loads(done.stdout.strip().splitlines()[-1])})
    return rows


def _child(started: float) -> dict:
    """In the timed process: build, warm up and step one window, reporting seconds per phase."""
    import torch

    from ..infer import StreamingSession
    from ..infer.cache import PAGE_SIZE
    from ..infer.runner import window_launches
    from ..kernels import aot
    from ..models import tiny_qwen_vl, use_livecc_attention
    from ..qwen_vl import offline_processor
    from .measure import qwen2vl_config, random_qwen2vl

    marks = {"import_s": time.time()}
    gpu = torch.cuda.is_available()
    processor = offline_processor()
    if gpu:  # as `livecc stream` does: the kernels compile while the model is made
        aot.compile_ahead(window_launches(qwen2vl_config("qwen2vl-7b"), torch.bfloat16, PAGE_SIZE, "cuda"),
                          background=True)
        model = random_qwen2vl("qwen2vl-7b", "sdpa").eval()
        size = (360, 640)
    else:
        model = tiny_qwen_vl(seed=0).eval()
        size = (90, 120)
    use_livecc_attention(model)
    if gpu:
        torch.cuda.synchronize()
    marks["model_s"] = time.time()
    session = StreamingSession(model, processor, max_new_tokens=16)
    warm = session.engine.warm_up(1, session.config.cache_tokens(session.engine.spec))
    frames = torch.randint(0, 256, (session.frames_needed, *size, 3), dtype=torch.uint8,
                           generator=torch.Generator().manual_seed(0))
    session.step(frames.to(session.engine.device))  # its text is on the host: the window is done
    marks["first_window_s"] = time.time()
    row = {"import_s": marks["import_s"] - started, "model_s": marks["model_s"] - marks["import_s"],
           **warm, "first_window_s": marks["first_window_s"] - marks["model_s"] - sum(warm.values())}
    row["total_s"] = marks["first_window_s"] - started
    row["device"] = torch.cuda.get_device_name() if gpu else "cpu"
    return {k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m livecc.bench.cold_start", description=__doc__.splitlines()[0])
    parser.add_argument("--started", type=float, default=None,
                        help="the parent's time.time() before it launched this process (else: now)")
    args = parser.parse_args(argv)
    print(json.dumps(_child(args.started if args.started is not None else time.time())), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
