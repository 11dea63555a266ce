"""``make gpu-check``: one lease of a GPU machine turned into one verdict.

Runs the GPU test suite (``pytest -m gpu tests/gpu``) and then the benchmarks, and writes
``bench/results/<date>-<device>-gpu-check.{md,json}``: passed / failed / skipped per test (with the
failure's message), every benchmark's headline figures against their targets, the commit and the
versions. Exits non-zero when a test or a benchmark failed.

    python -m livecc.bench.gpu_check [NAME ...] [--out bench/results] [--no-bench]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

from .results import environment, on_gpu, slug
from .runner import BENCHMARKS
from .runner import main as run_benchmarks

__all__ = ["main"]


def _tests(junit: Path) -> list[dict]:
    """Each test case of a JUnit XML file: name, outcome and, for a failure, its message."""
    rows = []
    for case in ET.parse(junit).getroot().iter("testcase"):
        outcome, message = "passed", ""
        for kind in ("failure", "error", "skipped"):
            node = case.find(kind)
            if node is not None:
                outcome = "skipped" if kind == "skipped" else "failed"
                lines = (node.get("message") or node.text or "").strip().splitlines()
                message = lines[0][:300] if lines else ""
        rows.append({"test": f"{case.get('classname')}::{case.get('name')}", "outcome": outcome,
                     "seconds": float(case.get("time", 0)), "message": message})
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="livecc.bench.gpu_check", description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", choices=[[], *BENCHMARKS], metavar="NAME", help="benchmarks (default: all)")
    parser.add_argument("--out", default="bench/results")
    parser.add_argument("--no-bench", action="store_true", help="the test suite only")
    args = parser.parse_args(argv)
    env = environment()
    started = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        junit = Path(tmp) / "gpu.xml"
        suite = subprocess.run([sys.executable, "-m", "pytest", "-m", "gpu", "tests/gpu", "-q", "-p",
                                "no:cacheprovider", f"--junitxml={junit}"])
        tests = _tests(junit) if junit.is_file() else []
    t_tests = time.time() - started
    bench_rc = 0 if args.no_bench else run_benchmarks([*args.names, "--out", args.out])
    headlines = []
    for path in sorted(Path(args.out).glob(f"{env['date'][:10]}-{slug(env['device'])}-*.json")):
        data = json.loads(path.read_text())
        if data.get("benchmark") and data["environment"]["date"] >= env["date"]:
            headlines += [{"benchmark": data["benchmark"], **h, "file": path.with_suffix(".md").name}
                          for h in data.get("headline", [])]
    counts = {k: sum(t["outcome"] == k for t in tests) for k in ("passed", "failed", "skipped")}
    if not on_gpu():
        verdict = "NOT RUN (no CUDA device: every GPU test skipped)"
    else:
        verdict = "PASS" if suite.returncode == 0 and bench_rc == 0 and counts["passed"] else "FAIL"
    lines = [f"# GPU check on {env['device']}: {verdict}", "",
             f"commit {env['commit'][:10]}{' (dirty)' if env['dirty'] else ''}, {env['date']}; torch {env['torch']}, "
             f"triton {env['triton']}, transformers {env['transformers']}, CUDA {env.get('cuda')}, driver "
             f"{env.get('driver')}", "",
             f"Tests: {counts['passed']} passed, {counts['failed']} failed, {counts['skipped']} skipped "
             f"in {t_tests:.0f} s (pytest exit {suite.returncode}). Benchmarks: exit {bench_rc}; "
             f"{time.time() - started:.0f} s in all.", "",
             "| benchmark | target | goal | figure | file |", "|---|---|---|---|---|"]
    lines += [f"| {h['benchmark']} | {h['target']} | {h['goal']} | {h['figure']} | [{h['file']}]({h['file']}) |"
              for h in headlines]
    lines += ["", "| test | outcome | seconds | message |", "|---|---|---|---|"]
    lines += [f"| {t['test']} | {t['outcome']} | {t['seconds']:.1f} | {t['message'].replace('|', '/')} |"
              for t in tests]
    stem = Path(args.out) / f"{env['date'][:10]}-{slug(env['device'])}-gpu-check"
    stem.parent.mkdir(parents=True, exist_ok=True)
    stem.with_suffix(".md").write_text("\n".join(lines) + "\n")
    stem.with_suffix(".json").write_text(json.dumps({"environment": env, "verdict": verdict, "tests": tests,
                                                     "headlines": headlines, "pytest_exit": suite.returncode,
                                                     "bench_exit": bench_rc}, indent=2) + "\n")
    print("\n".join(lines[:6]))
    print(f"wrote {stem.with_suffix('.md')}")
    return 0 if verdict == "PASS" else 1


if __name__ == "__main__":
    sys.exit(main())
