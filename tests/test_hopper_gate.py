"""The Hopper gate, on any machine: every kernel compiled for sm_90 through its real launcher, for
every tiling the code can launch, by the Triton installed here (``livecc.kernels.aot``). Each
check runs in a process of its own: the test session runs the kernels in Triton's interpreter,
which must be off for them to compile."""

import json
import os
import subprocess
import sys
import textwrap

import pytest

pytest.importorskip("triton")

COMPILING = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}


def run_python(code: str, timeout: int = 900) -> str:
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=COMPILING, capture_output=True,
                          text=True, timeout=timeout)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout


@pytest.mark.slow
def test_every_kernel_compiles_for_hopper_within_shared_memory_and_without_spills(tmp_path):
    """The gate itself: no launch fails to compile, none needs more shared memory than an H100
    block has, no bf16/fp16 kernel spills registers; and no kernel of the package escapes it."""
    done = subprocess.run([sys.executable, "-m", "livecc.kernels.aot", "--scope", "all", "--jobs",
                           str(min(4, os.cpu_count() or 1)), "--out", str(tmp_path)], env=COMPILING,
                          capture_output=True, text=True, timeout=3000)
    (table,) = tmp_path.glob("*-sm90-triton-*-kernels.json")
    data = json.loads(table.read_text())
    assert done.returncode == 0 and not data["problems"], "\n".join(data["problems"]) or done.stdout[-3000:]
    compiled = {k["kernel"] for row in data["rows"] for k in row["kernels"]}
    launched = set(run_python("""
        import importlib, pkgutil
        import livecc.kernels as kernels
        from triton.runtime.jit import JITFunction
        names = set()
        for info in pkgutil.walk_packages(kernels.__path__, "livecc.kernels."):
            if info.name.endswith(".triton"):
                module = importlib.import_module(info.name)
                names |= {n for n, f in vars(module).items() if isinstance(f, JITFunction) and n.endswith("_kernel")}
        print(" ".join(sorted(names)))
    """).split())
    assert launched and launched <= compiled, launched - compiled
    assert (tmp_path / table.with_suffix(".md").name).read_text().count("| yes m64n") > 0  # wgmma seen, with its shapes


def test_the_tuner_prunes_by_the_compiled_kernel_the_launcher_runs():
    """The autotuner's pruning, called as its run() calls it, compiles each tiling for the call's own
    arguments and keeps those that fit: the kernels it compiles are the launcher's (the same cache
    entries), and it keeps exactly the tilings whose compiled shared memory is within the limit."""
    # (the same compilation: equal hashes, Triton's cache key; its in-memory keys also count options
    # passed as defaults, so the objects may differ)
    print(run_python("""
        import torch
        from livecc.kernels import aot, cu_seqlens
        from livecc.kernels.varlen_attention import triton as attention

        with aot.compile_only(90) as compiled:
            seen = {}
            def record(kernel, jitted, tuners, grid, args, meta, tma=False):
                seen.update(jitted=jitted, tuner=tuners[0], args=args, meta=meta)
            launch, attention._launch = attention._launch, record
            q, k = torch.randn(500, 28, 128).bfloat16(), torch.randn(500, 4, 128).bfloat16()
            cu = cu_seqlens([200, 300])
            attention.varlen_attention_fwd(q, k, k, cu, cu, 300, True, 0.1)
            attention._launch = launch
            tuner = seen["tuner"]  # pruned as its run() prunes: the launch's grid and warmup flag in kwargs
            tuner.nargs = dict(zip(tuner.arg_names, seen["args"]))
            kept = tuner.prune_configs({**seen["meta"], "grid": lambda meta: (1,), "warmup": False})
            by_prune = {kernel.hash for name, kernel, _ in compiled if name == "_fwd_kernel"}
            compiled.clear()
            for cfg in attention.tuning_space("fwd"):
                attention.FORCED["fwd"] = cfg
                attention.varlen_attention_fwd(q, k, k, cu, cu, 300, True, 0.1)
            by_launch = [kernel for name, kernel, _ in compiled if name == "_fwd_kernel"]
        assert len(by_launch) == len(seen["tuner"].configs) == len(by_prune)
        assert {kernel.hash for kernel in by_launch} == by_prune, "the tuner compiled other kernels"
        fits = [k.metadata.shared <= attention.SMEM_LIMIT for k in by_launch]
        assert [c.kwargs for c in kept] == [c.kwargs for c, f in zip(seen["tuner"].configs, fits) if f]
    """))


def test_the_backward_tuner_drops_the_tilings_that_spill():
    """The key-block backward's tuner, pruning as its run() does for the 7B's heads, keeps exactly
    the tilings tried at d128 whose compiled kernel fits shared memory and does not spill (read
    from each cubin as the gate reads it), and never one that spills while another does not."""
    run_python("""
        import torch
        from livecc.kernels import aot, cu_seqlens, cubin
        from livecc.kernels.varlen_attention import triton as attention

        with aot.compile_only(90) as compiled:
            seen = {}
            def record(kernel, jitted, tuners, grid, args, meta, tma=False):
                if kernel == "bwd_kv":
                    seen.update(tuner=tuners[0], args=args, meta=meta)
            launch, attention._launch = attention._launch, record
            q, k = torch.randn(500, 28, 128).bfloat16(), torch.randn(500, 4, 128).bfloat16()
            cu = cu_seqlens([200, 300])
            lse = torch.zeros(28, 500)
            attention.varlen_attention_bwd(q, q, k, k, q, lse, cu, cu, 300, 300, True, 0.1)
            attention._launch = launch
            tuner = seen["tuner"]
            tuner.nargs = dict(zip(tuner.arg_names, seen["args"]))
            compiled.clear()
            kept = tuner.prune_configs({**seen["meta"], "grid": lambda meta: (1,), "warmup": False})
            tried = [c for c, t in zip(tuner.configs, attention.tuning_space("bwd_kv")) if 128 in t.head_dims
                     or not t.head_dims]
            kernels = [kernel for name, kernel, _ in compiled if name == "_bwd_dkdv_kernel"]
        assert len(kernels) == len(tried)
        fits = [c for c, kernel in zip(tried, kernels) if kernel.metadata.shared <= attention.SMEM_LIMIT]
        clean = [c for c, kernel in zip(tried, kernels) if c in fits and not cubin.spills(kernel)]
        assert [c.kwargs for c in kept] == [c.kwargs for c in (clean or fits)]
        print(len(tried), len(clean))
    """)


def test_the_gate_counts_a_spill_only_where_no_tiling_of_its_tuner_is_clean():
    from livecc.kernels.aot import problems, pruned

    def row(tiling, spills, kernel="_bwd_dkdv_kernel", launch="bwd"):
        return {"launch": {"kernel": launch, "shape": "llm7b", "dtype": "bf16", "config": [tiling]}, "ok": True,
                "kernels": [{"kernel": kernel, "shared": 1, "spills": spills, "spill_bytes": 8,
                             "spill_instructions": 2}]}

    clean = row(["bwd_kv", 16, 64, 8, 2, False], False)
    spilling = row(["bwd_kv", 64, 64, 8, 2, False], True)
    alone = row(["bwd_kv", 64, 64, 8, 2, True], True)  # the descriptor tilings: another tuner's choice
    untuned = row(["bwd_kv", 16, 64, 8, 2, False], True, kernel="_delta_kernel")
    rows = [clean, spilling, alone, untuned]
    assert pruned(rows) == {(1, 0)}
    found = problems(rows, limit=10)
    assert len(found) == 2 and "True" in found[0] and "_delta_kernel" in found[1]


def test_a_new_frame_size_or_resize_ratio_does_not_recompile_the_preprocessing():
    run_python("""
        import torch
        from livecc.kernels import aot
        from livecc.kernels.preprocess_frames.reference import PatchGeometry
        from livecc.kernels.preprocess_frames.triton import preprocess_frames_fwd

        with aot.compile_only(90) as compiled:
            for (h, w), size in [((360, 640), (336, 616)), ((1080, 1920), (420, 756)), ((97, 131), (112, 140)),
                                 ((720, 1280), (728, 1288))]:
                frames = torch.zeros(3, h, w, 3, dtype=torch.uint8)
                preprocess_frames_fwd(frames, size, PatchGeometry(), torch.bfloat16)
        assert len(compiled) == 4 and len({id(kernel) for _, kernel, _ in compiled}) == 1, compiled
    """)
