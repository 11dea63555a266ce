"""``make gpu-check``: one lease of a GPU machine turned into one verdict, readable at any moment.

The run is a plan of items, each a separate process with a time bound: the device's ceilings,
the kernels compiled in parallel processes, groups of GPU tests, and benchmarks. After every item
the report is rewritten in ``--out``: ``<date>-<device>-gpu-check.md`` and ``.json`` (every item
and test with its outcome, every benchmark's headline figures), ``gpu-check-junit.xml``,
``gpu-check.log`` (everything the items printed) and ``gpu-check-bench.tar`` (the benchmarks'
own result files), so a run killed at any point leaves a verdict of what it did. An item past its
bound is killed (its whole process group) and the run goes on with the next, as after a failure:
a compile or a benchmark slower than planned costs its own bound only.

Tiers: ``quick`` (default) takes one headline figure per benchmark and checks every kernel and
the riskiest paths in bf16, within 9 minutes by its bounds (one command of a lease); ``full`` runs
the whole GPU suite and every benchmark, stopping before an item that would pass ``--budget-s``. Without a GPU the
tests run (and skip, saying why), nothing else does, and the verdict is NOT RUN.

    python -m livecc.bench.gpu_check [--tier quick|full] [--out DIR] [--budget-s N] [--dry-run]
                                     [--only REGEX] [--rerun-failed REPORT.json] [--plan PLAN.json]
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import xml.etree.ElementTree as ET
from pathlib import Path

from ..cache import file_label
from .results import environment, on_gpu

__all__ = ["FULL", "QUICK", "Item", "main"]


@dataclasses.dataclass
class Item:
    """One step of a plan: ``tests`` (pytest node ids), ``bench`` (a benchmark and its options),
    ``compile`` (``livecc.kernels.aot`` options) or ``command`` (any argv), killed past ``bound_s``."""

    name: str
    kind: str
    args: list[str]
    bound_s: float
    test_timeout_s: float | None = None  # tests: each test's own bound (default: the item's)


KERNELS = "tests/gpu/test_kernels_cuda.py::"
MODELS = "tests/gpu/test_models_cuda.py::"
# The riskiest paths first; one pytest process (each item pays a process start and CUDA's).
QUICK_TESTS = [
    f"{KERNELS}test_varlen_attention_on_edge_shapes[causal-d128-28x4-bf16]",
    f"{KERNELS}test_varlen_attention_on_edge_shapes[full-d80-16x16-bf16]",
    f"{KERNELS}test_varlen_attention_queries_after_a_cache[bf16]",
    f"{KERNELS}test_paged_prefill_after_an_unpaged_call_of_the_same_shape",
    f"{KERNELS}test_paged_decode_attention[d128-28x4-bf16]",
    f"{KERNELS}test_text_only_linear_cross_entropy[mean-bf16]",
    f"{KERNELS}test_rotary_qk[4097-28x4-d128-bf16]",
    f"{KERNELS}test_rerotate_keys[bf16]",
    f"{KERNELS}test_preprocess_frames[1080p]",
    f"{KERNELS}test_preprocess_frames[13x9]",
    f"{KERNELS}test_every_attention_backend_against_the_reference[mixed-torch_varlen]",
    f"{KERNELS}test_every_attention_backend_against_the_reference[equal-auto]",
    f"{MODELS}test_logits_and_every_gradient_match_sdpa[qwen2_vl-bf16]",
    f"{MODELS}test_streams_stepped_together_equal_one_masked_full_forward[qwen2_vl-graphs-bf16]",
    f"{MODELS}test_streams_stepped_together_equal_one_masked_full_forward[qwen3_vl-graphs-bf16]",
    f"{MODELS}test_training_steps_with_activation_checkpointing_and_a_first_probe",
    f"{MODELS}test_the_demo_runs_on_the_gpu",
    "tests/gpu/test_video_cuda.py::test_nvdec_decodes_a_clip_as_the_cpu_does",
]
# Bounds: what each item took on an H200 (2026-12-04), with a margin; the benchmarks before the tests
# (their figures come from nowhere else), all after the compile that fills the Triton cache.
QUICK = [
    Item("ceilings: copy bandwidth and bf16 GEMM rate", "bench", ["ceilings"], 15),
    Item("kernels compiled for this GPU in parallel processes", "compile", ["--scope", "quick"], 75),
    Item("bench attention: d128 causal GQA 28/4 at 16k and the ViT's d80, beside FA2 and cuDNN", "bench",
         ["attention", "--shapes", "llm-1x16k,vit-64x1536", "--providers",
          "livecc,torch_varlen_fa2,sdpa_cudnn,sdpa_flash"], 60),
    Item("bench cross_entropy: 16k rows, 5% text, 7B head", "bench",
         ["cross_entropy", "--text-fracs", "0.05", "--no-large-pack"], 60),
    Item("bench stream: 7B-shape windows, p50/p99 beside the floor", "bench",
         ["stream", "--windows", "8", "--streams", "", "--memory-windows", "0", "--runs", "livecc", "--long-hours", "",
          "--cold-start", ""],
         75),
    Item("bench train: one 7B-shape step at a 16k pack", "bench",
         ["train", "--shapes", "qwen2vl-7b", "--packs", "16384", "--variants", "livecc", "--steps", "2"], 45),
    Item("bench video: the frame-to-patch kernel's bandwidth", "bench", ["video", "--kernel-only", "--seconds", "2"],
         30),
    Item("tests in bf16: attention d128 GQA 28/4 and d80 (fwd, bwd, after a cache), paged prefill after an unpaged "
         "call, paged decode, cross-entropy, rotary, key re-rotation, preprocessing, the attention backends; the tiny "
         "model against SDPA; Qwen2-VL and Qwen3-VL streams against one masked forward (CUDA graphs); 5 training "
         "steps under activation checkpointing with the dispatcher probing; the demo, shortened; NVDEC on one clip",
         "tests", QUICK_TESTS, 180, 60),
]

FULL = [
    Item("ceilings: copy bandwidth and bf16 GEMM rate", "bench", ["ceilings"], 30),
    Item("kernels compiled for this GPU in parallel processes", "compile", ["--scope", "all"], 300),
    Item("GPU suite: kernels", "tests", ["tests/gpu/test_kernels_cuda.py"], 1200, 300),
    Item("GPU suite: models, streaming, training, demo", "tests", ["tests/gpu/test_models_cuda.py"], 900, 300),
    Item("GPU suite: video", "tests", ["tests/gpu/test_video_cuda.py"], 300, 120),
    *[Item(f"bench {name}", "bench", [name], bound) for name, bound in
      (("attention", 900), ("cross_entropy", 300), ("video", 900), ("stream", 2400), ("train", 2400))],
]
TIERS = {"quick": QUICK, "full": FULL}
# What comes back from a lease is at most 8 files: these five.
NAMES = {"log": "gpu-check.log", "junit": "gpu-check-junit.xml", "bench": "gpu-check-bench.tar"}


class Run:
    """A plan being run: every item's outcome so far, written out after each."""

    def __init__(self, plan: list[Item], tier: str, out: Path, budget_s: float | None, gpu: bool):
        self.plan, self.tier, self.out, self.budget_s, self.gpu = plan, tier, out, budget_s, gpu
        self.env = environment()
        self.stem = out / f"{self.env['date'][:10]}-{file_label(self.env['device'])}-gpu-check"
        self.results: list[dict] = []  # one per item started or left out
        self.suites: list[ET.Element] = []
        self.started = time.time()
        self.bench_dir = Path(tempfile.mkdtemp(prefix="livecc-gpu-check-bench-"))
        self.work = Path(tempfile.mkdtemp(prefix="livecc-gpu-check-"))
        out.mkdir(parents=True, exist_ok=True)
        self.log = open(out / NAMES["log"], "a", buffering=1)

    # ---------------------------------------------------------------- running

    def run(self) -> str:
        for index, item in enumerate(self.plan):
            left = {"item": item.name, "kind": item.kind, "bound_s": item.bound_s}
            spent = time.time() - self.started
            if self.budget_s is not None and spent + item.bound_s > self.budget_s:
                self.results.append({**left, "outcome": "left out",
                                     "message": f"its bound ({item.bound_s:.0f} s) would pass the budget "
                                                f"({self.budget_s:.0f} s, {spent:.0f} s spent)"})
                continue
            if not self.gpu and item.kind in ("bench", "compile"):
                self.results.append({**left, "outcome": "not run", "message": "no CUDA device"})
                continue
            result = {**left, "outcome": "running"}
            self.results.append(result)
            self.write()
            self._say(f"== [{index + 1}/{len(self.plan)}] {item.name} (bound {item.bound_s:.0f} s)")
            result.update(self._run_item(item))
            self._say(f"== {result['outcome']} in {result['seconds']:.0f} s: {item.name}")
            self.write()
        self.write(final=True)
        self.log.close()
        return self.verdict(final=True)

    def _say(self, line: str) -> None:
        print(line, flush=True)
        self.log.write(line + "\n")

    def _run_item(self, item: Item) -> dict:
        junit = self.work / f"item-{len(self.results)}.xml"
        argv = self._argv(item, junit)
        env = {**os.environ, "PYTHONUNBUFFERED": "1",
               "LIVECC_CACHE": str(self.work / "livecc-cache")}  # a first run: the dispatcher probes
        cached = _triton_cache_entries()
        t0 = time.time()
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                                start_new_session=True)
        tail: list[str] = []
        pump = threading.Thread(target=self._pump, args=(proc.stdout, tail), daemon=True)
        pump.start()
        try:
            rc = proc.wait(timeout=item.bound_s)
            timed_out = False
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            rc, timed_out = proc.wait(), True
        pump.join(5)
        result = {"seconds": time.time() - t0, "exit": rc, "command": " ".join(argv),
                  "kernels_compiled": _triton_cache_entries() - cached}  # 0 after the compile item: all cache hits
        if item.kind == "tests" and junit.is_file():
            suite = ET.parse(junit).getroot()
            self.suites.append(suite)
            result["tests"] = _cases(suite)
        if item.kind == "bench":
            result["headline"] = self._headline(item.args[0])
            self._pack_bench()
        if item.kind == "compile":
            result["message"] = next((line for line in reversed(tail) if "launches compiled" in line), "")
        if timed_out:
            result["outcome"] = "timed out"
            result["message"] = f"killed after {item.bound_s:.0f} s; last output: " + " | ".join(tail[-3:])[-300:]
        elif item.kind == "tests":
            counts = {k: sum(t["outcome"] == k for t in result.get("tests", [])) for k in ("passed", "failed",
                                                                                          "skipped")}
            result["message"] = ", ".join(f"{v} {k}" for k, v in counts.items() if v)
            result["outcome"] = ("passed" if rc == 0 and counts["passed"] else
                                 "skipped" if rc == 0 else "failed")
            if rc not in (0, 1):  # collection errors, no tests: the item itself is broken
                result["message"] = f"pytest exit {rc}: " + " | ".join(tail[-3:])[-300:]
        else:
            result["outcome"] = "passed" if rc == 0 else "failed"
            if rc:
                result["message"] = f"exit {rc}: " + " | ".join(tail[-3:])[-300:]
        return result

    def _argv(self, item: Item, junit: Path) -> list[str]:
        if item.kind == "tests":
            argv = [sys.executable, "-m", "pytest", "-q", "-rfEs", "-p", "no:cacheprovider", f"--junitxml={junit}"]
            if importlib.util.find_spec("pytest_timeout") is not None:  # a hung test dumps every stack, then dies
                # (pytest loads the installed plugin itself; naming it with -p again is an error)
                argv += [f"--timeout={int(item.test_timeout_s or item.bound_s - 2)}", "--timeout-method=thread"]
            return argv + item.args
        if item.kind == "bench":
            return [sys.executable, "-m", "livecc.bench", item.args[0], "--out", str(self.bench_dir), *item.args[1:]]
        if item.kind == "compile":
            return [sys.executable, "-m", "livecc.kernels.aot", "--target", "device", *item.args]
        if item.kind == "command":
            return list(item.args)
        raise ValueError(f"plan item {item.name!r}: unknown kind {item.kind!r}")

    def _pump(self, stream, tail: list[str]) -> None:
        for line in stream:
            sys.stdout.write(line)
            self.log.write(line)
            tail.append(line.rstrip())
            del tail[:-40]

    def _headline(self, name: str) -> list[dict]:
        paths = sorted(self.bench_dir.glob(f"*-{name}.json"), key=lambda p: p.stat().st_mtime)
        if not paths:
            return []
        data = json.loads(paths[-1].read_text())
        return [{**h, "file": paths[-1].with_suffix(".md").name} for h in data.get("headline", [])]

    def _pack_bench(self) -> None:
        tmp = self.out / (NAMES["bench"] + ".tmp")
        with tarfile.open(tmp, "w") as tar:
            for path in sorted(self.bench_dir.iterdir()):
                tar.add(path, arcname=path.name)
        os.replace(tmp, self.out / NAMES["bench"])

    # ---------------------------------------------------------------- the report

    def verdict(self, final: bool = False) -> str:
        outcomes = [r["outcome"] for r in self.results]
        if not self.gpu:
            return "NOT RUN (no CUDA device: GPU tests skip, benchmarks and compiles are not run)"
        if not final:
            return f"RUNNING ({sum(o not in ('running',) for o in outcomes)} of {len(self.plan)} items done)"
        if any(o in ("failed", "timed out") for o in outcomes):
            return "FAIL"
        if any(o in ("left out", "not run") for o in outcomes):
            return "PARTIAL"
        return "PASS"

    def write(self, final: bool = False) -> None:
        env, verdict = self.env, self.verdict(final)
        tests = [{"item": r["item"], **t} for r in self.results for t in r.get("tests", [])]
        headlines = [{"benchmark": r["item"], **h} for r in self.results for h in r.get("headline", [])]
        lines = [f"# GPU check ({self.tier} tier) on {env['device']}: {verdict}", "",
                 f"commit {env['commit'][:10]}{' (dirty)' if env['dirty'] else ''}, {env['date']}; torch "
                 f"{env['torch']}, triton {env['triton']}, transformers {env['transformers']}, CUDA {env.get('cuda')},"
                 f" driver {env.get('driver')}; {time.time() - self.started:.0f} s so far.", "",
                 "| item | outcome | seconds (bound) | kernels compiled | notes |", "|---|---|---|---|---|"]
        lines += [f"| {r['item']} | {r['outcome']} | {r.get('seconds', 0):.0f} ({r.get('bound_s', 0):.0f}) | "
                  f"{r.get('kernels_compiled', '-')} | {_cell(r.get('message', ''))} |" for r in self.results]
        lines += ["", "| benchmark | target | goal | figure |", "|---|---|---|---|"]
        lines += [f"| {_cell(h['benchmark'])} | {h['target']} | {h['goal']} | {_cell(h['figure'])} |"
                  for h in headlines]
        lines += ["", "| test | outcome | seconds | message |", "|---|---|---|---|"]
        lines += [f"| {t['test']} | {t['outcome']} | {t['seconds']:.1f} | {_cell(t['message'])} |" for t in tests]
        _write(self.stem.with_suffix(".md"), "\n".join(lines) + "\n")
        _write(self.stem.with_suffix(".json"), json.dumps(
            {"environment": env, "tier": self.tier, "verdict": verdict, "items": self.results, "tests": tests,
             "headlines": headlines, "seconds": time.time() - self.started}, indent=2) + "\n")
        root = ET.Element("testsuites")
        root.extend(self.suites)
        _write(self.out / NAMES["junit"], ET.tostring(root, encoding="unicode"))


def _triton_cache_entries() -> int:
    """Kernels in Triton's on-disk cache (one directory each)."""
    root = Path(os.environ.get("TRITON_CACHE_DIR") or Path.home() / ".triton" / "cache")
    return sum(1 for p in root.iterdir() if p.is_dir()) if root.is_dir() else 0


def _write(path: Path, text: str) -> None:
    """Whole or not at all: a run killed mid-write leaves the previous version."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _cell(text: str) -> str:
    return str(text).replace("|", "/").replace("\n", " ")


def _cases(suite: ET.Element) -> list[dict]:
    """Each test case of a JUnit tree: name, outcome and, for a failure, its message."""
    rows = []
    for case in suite.iter("testcase"):
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


def _rerun_plan(report: Path, tier_plan: list[Item]) -> list[Item]:
    """The items of an earlier report that failed or did not finish; of a tests item, only the
    tests that failed (all of them if the item never reported its tests)."""
    data = json.loads(report.read_text())
    by_name = {item.name: item for item in tier_plan}
    plan = []
    for r in data["items"]:
        if r["outcome"] in ("passed", "skipped") or r["item"] not in by_name:
            continue
        item = by_name[r["item"]]
        failed = [_node_id(t["test"]) for t in r.get("tests", []) if t["outcome"] == "failed"]
        plan.append(dataclasses.replace(item, args=failed) if item.kind == "tests" and failed else item)
    return plan


def _node_id(junit_name: str) -> str:
    """``tests.gpu.test_x::test_y[p]`` (JUnit's class path) -> ``tests/gpu/test_x.py::test_y[p]``."""
    module, _, test = junit_name.partition("::")
    return module.replace(".", "/") + ".py::" + test


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m livecc.bench.gpu_check", description=__doc__.splitlines()[0])
    parser.add_argument("--tier", choices=TIERS, default="quick")
    parser.add_argument("--out", default="bench/results", help="where the report is written, after every item")
    parser.add_argument("--budget-s", type=float, default=None, help="start no item whose bound would pass this")
    parser.add_argument("--bound-scale", type=float, default=1.0, help="multiply every item's time bound")
    parser.add_argument("--only", default=None, help="a regular expression over the items' names")
    parser.add_argument("--rerun-failed", type=Path, default=None, metavar="REPORT.json",
                        help="only the items (and tests) that failed or did not finish in that report")
    parser.add_argument("--plan", type=Path, default=None, help="a JSON list of items instead of a tier's")
    parser.add_argument("--dry-run", action="store_true", help="print the plan and its bounds, run nothing")
    args = parser.parse_args(argv)
    plan = [Item(**x) for x in json.loads(args.plan.read_text())] if args.plan else TIERS[args.tier]
    if args.rerun_failed:
        plan = _rerun_plan(args.rerun_failed, plan)
    if args.only:
        plan = [item for item in plan if re.search(args.only, item.name)]
    plan = [dataclasses.replace(item, bound_s=item.bound_s * args.bound_scale) for item in plan]
    if args.dry_run:
        for item in plan:
            print(f"{item.bound_s:6.0f} s  {item.kind:8s} {item.name}")
        print(f"{sum(i.bound_s for i in plan):6.0f} s  in all ({len(plan)} items, {args.tier} tier)")
        return 0
    run = Run(plan, args.tier if not args.plan else "custom", Path(args.out), args.budget_s, on_gpu())
    verdict = run.run()
    print(f"GPU check: {verdict}; report {run.stem.with_suffix('.md')}")
    return 0 if verdict == "PASS" else 1


if __name__ == "__main__":
    sys.exit(main())
