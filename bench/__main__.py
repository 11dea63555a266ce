"""Run every benchmark that fits this machine and write one combined result file.

    python -m bench          (or: livecc bench)

GPU: attention (P1/P2), cross-entropy (P3), video (P4), streaming (P6-P8), training (P5), with NVML
telemetry. CPU: the CPU-meaningful subset (cross-entropy, video and streaming, as ratios within the run).
Each benchmark also writes its own file; the combined ``bench/results/<date>-<device>.json``
and ``.md`` list them all.
"""

from __future__ import annotations

import json
import time
import traceback
from pathlib import Path

from bench.common import RESULTS, _slug, environment, on_gpu


def main(argv=None) -> int:
    from bench import attention, cross_entropy, stream, train, video
    from bench.telemetry import GpuTelemetry

    suite = [("cross_entropy", cross_entropy.main), ("video", video.main), ("stream", stream.main)]
    if on_gpu():
        suite = [("attention", attention.main), *suite, ("train", train.main)]
    env = environment()
    results, failures = {}, {}
    with GpuTelemetry() as telemetry:
        for name, fn in suite:
            t0 = time.perf_counter()
            print(f"== {name}", flush=True)
            try:
                out = fn([])
                file = Path(out["file"]).name if out else None
                results[name] = {"file": file, "seconds": round(time.perf_counter() - t0, 1)}
            except Exception as e:  # one failing benchmark must not hide the others' results
                failures[name] = f"{type(e).__name__}: {e}"
                traceback.print_exc()
    payload = {"environment": env, "benchmarks": results, "failures": failures,
               "telemetry": telemetry.summary() if on_gpu() else None}
    stem = RESULTS / f"{env['date'][:10]}-{_slug(env['device'])}"
    stem.with_suffix(".json").write_text(json.dumps(payload, indent=2) + "\n")
    lines = [f"# livecc benchmarks on {env['device']}", "", f"commit {env['commit'][:10]}, {env['date']}", "",
             "| benchmark | seconds | result file |", "|---|---|---|"]
    lines += [f"| {k} | {v['seconds']} | {v['file']} |" for k, v in results.items()]
    lines += [f"| {k} | failed | {v} |" for k, v in failures.items()]
    if payload["telemetry"]:
        lines += ["", "GPU telemetry: " + json.dumps(payload["telemetry"])]
    stem.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
