"""Run the registered benchmarks that fit this machine and write their results."""

from __future__ import annotations

import argparse
import importlib
import time
import traceback

from .results import environment, on_gpu, regenerate_readme, write_sweep
from .telemetry import GpuTelemetry

__all__ = ["BENCHMARKS", "main"]

# name -> what it measures (the module livecc.bench.<name> runs it)
BENCHMARKS = {
    "ceilings": "the device's copy bandwidth and bf16 matrix rate, which the other figures are read against",
    "attention": "varlen attention (LLM packs, ViT frame groups) against FlashAttention-2, cuDNN, FlexAttention",
    "cross_entropy": "text-only linear cross-entropy against torch, Liger, cut-cross-entropy and the GEMM floor",
    "video": "decode + preprocess to ViT patch rows against decord + Hugging Face's processor",
    "stream": "streaming windows against the reference loop; streams stepped together; memory over a stream",
    "train": "training tokens/s and MFU against the reference stack",
    "train_census": "a training step of the 7B and 2B shapes op by op (meta tensors): bytes, FLOPs, floors",
    "serve": "live streams and viewers one server holds, every window delivered and health under 1 s",
    "asr": "speech recognition: audio hours heard per hour of work and word errors on spoken phrases",
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="livecc bench", description="Run livecc's benchmarks.", add_help=False,
        epilog="Options not listed here go to the one benchmark named, e.g. livecc bench video --clips 16; "
               "livecc bench NAME --help lists them.")
    parser.add_argument("-h", "--help", action="store_true", help="show this help (with one NAME: its options)")
    parser.add_argument("names", nargs="*", choices=[[], *BENCHMARKS], metavar="NAME",
                        help=f"benchmarks to run (default: all that fit this machine): {', '.join(BENCHMARKS)}")
    parser.add_argument("--out", default="bench/results", help="result directory")
    args, options = parser.parse_known_args(argv)
    if args.help and len(args.names) == 1:  # the benchmark's own parser prints its options and exits
        importlib.import_module(f"livecc.bench.{args.names[0]}").run(["--help"])
    if args.help:
        parser.print_help()
        return 0
    if options and len(args.names) != 1:
        parser.error(f"options {' '.join(options)} need exactly one benchmark named")
    env = environment()
    failures = {}
    with GpuTelemetry() as telemetry:
        for name in args.names or list(BENCHMARKS):
            print(f"== {name}: {BENCHMARKS[name]}", flush=True)
            t0 = time.perf_counter()
            try:
                sweep = importlib.import_module(f"livecc.bench.{name}").run(options)
            except Exception as e:  # one failing benchmark must not hide the others' results
                failures[name] = f"{type(e).__name__}: {e}"
                traceback.print_exc()
                continue
            if sweep is None:
                continue
            path = write_sweep(sweep, args.out, env)
            print(path.with_suffix(".md").read_text())
            print(f"({name}: {time.perf_counter() - t0:.0f} s)", flush=True)
    if on_gpu():
        print("GPU telemetry: " + str(telemetry.summary()))
    print(f"wrote {regenerate_readme(args.out)}")
    for name, error in failures.items():
        print(f"FAILED {name}: {error}")
    return 1 if failures else 0
