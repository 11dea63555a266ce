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


def test_compiling_ahead_covers_every_kernel_of_streaming_windows():
    """``aot.stream_launches(model, ...)``: every kernel the windows of two streams launch (the GPU's
    code path on this CPU, each launch compiled for sm_90 and not run: a first window, a steady one,
    one that evicts and re-rotates keys, decode steps over short and long caches) is among the
    kernels compiled ahead, by Triton's cache key, for a Qwen2-VL and a Qwen3-VL."""
    run_python("""
        import importlib
        import torch
        from livecc.infer import KVPool, StreamingSession, step_streams
        from livecc.kernels import aot
        from livecc.kernels.varlen_attention import triton as attention
        from livecc.models import tiny_qwen_vl, use_livecc_attention
        from livecc.qwen_vl import offline_processor

        for name in ("rotary", "rerotate", "paged_decode_attention", "preprocess_frames", "varlen_attention.backends"):
            importlib.import_module(f"livecc.kernels.{name}").use_triton = lambda t: True
        decode = importlib.import_module("livecc.kernels.paged_decode_attention.triton")
        decode._splits = lambda n, programs, device: max(1, min(n, -(-2 * 132 // programs)))  # an H100's 132 SMs
        # a CPU cannot time tilings: one tiling launched (a tuner compiles what the launcher does, tested above)
        tile = attention.tuning_space("fwd")[2]
        attention.FORCED["fwd"] = tile
        g = torch.Generator().manual_seed(0)
        for arch in ("qwen2_vl", "qwen3_vl"):
            model, processor = tiny_qwen_vl(arch=arch).to(torch.bfloat16), offline_processor(arch)
            use_livecc_attention(model)
            with aot.compile_only(90) as compiled:
                pool = KVPool.for_model(model, page_size=16)
                sessions = [StreamingSession(model, processor, pool=pool, max_new_tokens=4, seed=i, horizon=2.0,
                                             compact_after=0,
                                             min_pixels=64 * 64, max_pixels=64 * 64) for i in range(2)]
                sessions[0].engine.runner.use_static_steps()
                for _ in range(5):
                    step_streams(sessions, [torch.randint(0, 256, (s.frames_needed, 64, 64, 3), dtype=torch.uint8,
                                                          generator=g) for s in sessions])
            windows = {(name, kernel.hash) for name, kernel, _ in compiled}
            launches = aot.stream_launches(model.config, torch.bfloat16, 16)
            ahead = set()
            for launch in launches:
                if launch.kernel in ("fwd", "fwd_paged") and launch.config != aot._cfg(tile):
                    continue
                with aot.compile_only(90) as compiled:
                    aot.run_launch(launch, "cpu")
                ahead |= {(name, kernel.hash) for name, kernel, _ in compiled}
            names = {name for name, _ in windows}
            assert {"_preprocess_kernel", "_fwd_kernel", "_rotary_kernel", "_rerotate_kernel", "_split_kernel",
                    "_combine_kernel"} <= names, names
            assert windows <= ahead, (arch, sorted(windows - ahead))
            assert {c for c in (l.config for l in launches if l.kernel == "fwd")} == {
                aot._cfg(c) for c in attention.tuning_space("fwd", head_dim=model.model.visual.blocks[0].attn.head_dim)}
    """)


def test_a_shipped_tiling_is_launched_without_tuning(tmp_path):
    """Where the table shipped for the GPU holds the launch's key, the launcher compiles and runs
    that one tiling (a tuner, which times every tiling, would fail here: a CPU cannot time), and
    compiling ahead compiles it alone; a tiling the tuner would not try at that head dim is not used."""
    run_python("""
        import json
        import torch
        from pathlib import Path
        from livecc.kernels import aot, cu_seqlens, tilings
        from livecc.kernels.varlen_attention import triton as attention
        from livecc.models import tiny_qwen_vl

        tilings.TUNED = Path(TABLES)
        attention._gpu_name = lambda device: "Hopper Test GPU"
        shipped = ("fwd", 64, 64, 4, 4, False)
        key = [16, True, 2, 0, "bfloat16"]  # D, CAUSAL, GROUP, PAGE, dtype
        entries = [{"kernel": "fwd", "tma_tuner": False, "key": key, "tiling": list(shipped)},
                   {"kernel": "fwd", "tma_tuner": False, "key": [16, False, 1, 0, "bfloat16"],
                     "tiling": ["fwd", 64, 64, 4, 4, True]},  # a descriptor tiling for the pointer tuner
                   {"kernel": "fwd", "tma_tuner": False, "key": [16, True, 2, 16, "bfloat16"],
                    "tiling": ["fwd", 128, 32, 8, 4, False]}]  # the paged prefill's
        (tilings.TUNED / "hopper-test-gpu.json").write_text(json.dumps({"tilings": entries}))
        q, k = torch.randn(50, 4, 16).bfloat16(), torch.randn(50, 2, 16).bfloat16()
        with aot.compile_only(90) as compiled:
            attention.varlen_attention_fwd(q, k, k, cu_seqlens([20, 30]), cu_seqlens([20, 30]), 30, True, 0.1)
        fwd = [kernel for name, kernel, _ in compiled if name == "_fwd_kernel"]
        assert len(fwd) == 1 and (fwd[0].src.constants[(fwd[0].src.fn.arg_names.index("BM"),)],
                                  fwd[0].metadata.num_warps, fwd[0].metadata.num_stages) == (64, 4, 4)
        assert attention.shipped_tiling("Hopper Test GPU", "fwd", False, (16, False, 1, 0, "bfloat16")) is None
        model = tiny_qwen_vl().to(torch.bfloat16)  # decoder: 4 query heads of 16 over 2 KV heads; ViT: 2 of 16
        launches = aot.stream_launches(model.config, torch.bfloat16, 16, gpu="Hopper Test GPU")
        assert [l.config for l in launches if l.kernel == "fwd_paged"] == [("fwd", 128, 32, 8, 4, False)]
        assert {l.config for l in launches if l.kernel == "fwd"} == {aot._cfg(c) for c in attention.tuning_space("fwd")}
    """.replace("TABLES", repr(str(tmp_path))))
