"""livecc end to end on CUDA: the tiny models on livecc attention against SDPA, streaming sessions
against one masked full forward, training against the CPU loss curve, and the demo."""

import importlib
import json
import math

import pytest
import torch
from oracles import check_stream_logits

from livecc.infer import KVPool, StreamingSession, step_streams
from livecc.models import text_only_causal_lm_loss, tiny_qwen_vl, use_livecc_attention
from livecc.qwen_vl import mrope_position_ids, offline_processor

VIDEO_PAD, VISION_START, VISION_END = 151656, 151652, 151653
LOGIT_TOL = {torch.float32: (2e-4, 1e-4), torch.bfloat16: (6e-2, 3e-2)}


def video_doc(n_text=40, groups=3, row=1176):
    pieces = [torch.randint(0, 5000, (n_text,))]
    for _ in range(groups):
        pieces.append(torch.tensor([VISION_START] + [VIDEO_PAD] * 6 + [VISION_END]))
    pieces.append(torch.randint(0, 5000, (n_text,)))
    ids = torch.cat(pieces)
    grid = torch.tensor([[1, 4, 6]] * groups)
    pos, _ = mrope_position_ids(ids, {VIDEO_PAD: grid})
    return ids.cuda(), grid.cuda(), torch.randn(groups * 24, row, device="cuda"), pos.cuda()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("arch", ["qwen2_vl", "qwen2_5_vl", "qwen3_vl"])
def test_logits_and_every_gradient_match_sdpa(arch, dtype):
    ref = tiny_qwen_vl(seed=0, attn_implementation="sdpa", arch=arch).cuda().to(dtype)
    ours = tiny_qwen_vl(seed=0, arch=arch).cuda().to(dtype)
    use_livecc_attention(ours)
    ids, grid, pixels, pos = video_doc(row=1536 if arch == "qwen3_vl" else 1176)
    weights = torch.randn(1, ids.numel(), ref.config.text_config.vocab_size, device="cuda")
    logits, grads = [], []
    for model in (ref, ours):
        out = model(input_ids=ids[None], position_ids=pos[:, None], pixel_values_videos=pixels.to(dtype),
                    video_grid_thw=grid).logits
        (out.float() * weights).sum().backward()
        logits.append(out.float())
        grads.append({n: p.grad.float() for n, p in model.named_parameters() if p.grad is not None})
    atol, rtol = LOGIT_TOL[dtype]
    torch.testing.assert_close(logits[1], logits[0], atol=atol, rtol=rtol)
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        a, b = grads[1][name], grads[0][name]
        assert ((a - b).norm() / b.norm().clamp(min=1e-12)).item() < (1e-3 if dtype == torch.float32 else 5e-2), name


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("cuda_graphs", [True, False], ids=["graphs", "eager"])
@pytest.mark.parametrize("arch", ["qwen2_vl", "qwen3_vl"])  # Qwen3-VL: DeepStack in the captured prefill
def test_streams_stepped_together_equal_one_masked_full_forward(arch, dtype, cuda_graphs):
    model = tiny_qwen_vl(seed=0, attn_implementation="eager", arch=arch).cuda().to(dtype)
    pool = KVPool.for_model(model, page_size=16, pages=2)
    processor = offline_processor(arch)
    sessions = [StreamingSession(model, processor, query=q, max_new_tokens=6, trace=True, pool=pool, horizon=2.0,
                                 max_text_tokens=60, text_sink=8, cuda_graphs=cuda_graphs, min_pixels=56 * 56,
                                 max_pixels=90 * 120)
                for q in ("Who scores?", "", "Describe it.")]
    g = torch.Generator().manual_seed(0)
    for w in range(7):
        frames = [torch.randint(0, 256, (6 if w == 0 else 2, 90, 120, 3), dtype=torch.uint8, generator=g)
                  for _ in sessions]
        step_streams(sessions, frames, ["the ball" if (w, i) == (2, 1) else None for i in range(3)])
    atol, rtol = LOGIT_TOL[dtype]
    for s in sessions:
        assert s.trace.evictions  # the horizon of 2 s evicted frames
        check_stream_logits(model, s.trace, dtype, tol=dict(atol=atol, rtol=rtol))
    if cuda_graphs:
        runner = sessions[0].engine.runner
        assert runner.decode_graphs is not None and runner.decode_graphs.builds > 0
        # bf16: the ViT replayed too, on livecc's varlen attention (fp32 attends through SDPA: eager)
        assert (runner.vision_graphs is not None and runner.vision_graphs.builds > 0) == (dtype == torch.bfloat16)
    runners = {id(s.engine.runner): s.engine.runner for s in sessions}.values()
    scratch = sum(r.prefill_graphs is not None and r.prefill_graphs.scratch is not None for r in runners)
    for s in sessions:
        s.close()
    assert pool.pages_in_use == scratch  # every stream's pages back; captured prefills keep their scratch page


@pytest.mark.parametrize("arch", ["qwen2_vl", "qwen2_5_vl", "qwen3_vl"])
def test_the_captured_vit_encodes_what_hugging_faces_forward_does(arch):
    """The ViT replayed as a CUDA graph per (grid, windows) group: each window's embeddings and
    DeepStack features equal Hugging Face's forward (SDPA) over the same patch rows, in bf16."""
    from livecc.infer.vision import VisionGraphs
    from livecc.models import use_livecc_vision_attention

    model = tiny_qwen_vl(seed=0, arch=arch, vision_depth=3).cuda().to(torch.bfloat16)
    reference = tiny_qwen_vl(seed=0, arch=arch, vision_depth=3).cuda().to(torch.bfloat16)
    use_livecc_vision_attention(model)
    graphs = VisionGraphs(model)
    row = 3 * 2 * model.model.visual.patch_embed.patch_size ** 2
    for grids in ([(1, 4, 6), (2, 6, 4), (1, 4, 6)], [(1, 4, 6), (1, 4, 6), (2, 6, 4)]):
        pixels = torch.randn(sum(t * h * w for t, h, w in grids), row, device="cuda", dtype=torch.bfloat16)
        got = graphs.run(pixels, grids)
        out = reference.model.visual(pixels, grid_thw=torch.tensor(grids, device="cuda"))
        want = out[0] if isinstance(out, tuple) else out.pooler_output
        for (embeds, _), w in zip(got, want.split([t * h * w // 4 for t, h, w in grids])):
            torch.testing.assert_close(embeds.float(), w.float(), atol=6e-2, rtol=3e-2)
    assert all(g.graph is not None for g in graphs.groups.values())


def test_a_steady_window_on_the_gpu_reads_the_device_once_per_decode_step():
    """The census of the CPU tests, on the GPU with the graphs captured and replayed."""
    from livecc.bench.stream import census

    model = tiny_qwen_vl(seed=0).cuda().to(torch.bfloat16)
    use_livecc_attention(model)
    counted, results = census(model, offline_processor(), windows=5)
    steps = max(len(r.token_ids) for r in results)
    for window in counted.windows[2:]:
        assert window["vision"]["reads"] == 0 and window["vision"]["launches"] <= 10, dict(window["vision"])
        assert window["prefill"]["reads"] == 0 and window["decode"]["reads"] <= steps
        assert window["end"]["reads"] == 1


def test_a_warmed_up_engine_compiles_nothing_in_its_first_windows(tmp_path):
    """In a new process with an empty Triton cache: the warm-up compiles the windows' kernels in
    parallel processes (none fails), and the first windows (frames to patches, the ViT captured,
    the prefill, decode steps, keys evicted and moved) add no kernel to the cache; a second
    warm-up finds the mark and starts no process."""
    import os
    import subprocess
    import sys
    import textwrap

    code = textwrap.dedent("""
        import json, pathlib, torch, triton
        from livecc.infer import StreamingSession
        from livecc.models import tiny_qwen_vl, use_livecc_attention
        from livecc.qwen_vl import offline_processor
        model = tiny_qwen_vl(seed=0).cuda().to(torch.bfloat16)
        use_livecc_attention(model)
        session = StreamingSession(model, offline_processor(), max_new_tokens=4, page_size=16, horizon=2.0,
                                   compact_after=0, min_pixels=64 * 64, max_pixels=64 * 64)
        first = session.engine.runner.compile_ahead()
        session.engine.warm_up(1, 2048)
        cache = pathlib.Path(triton.knobs.cache.dir)
        before = sorted(str(p) for p in cache.rglob("*.cubin"))
        g = torch.Generator().manual_seed(0)
        for _ in range(5):
            session.step(torch.randint(0, 256, (session.frames_needed, 64, 64, 3), dtype=torch.uint8,
                                       generator=g).cuda())
        after = sorted(str(p) for p in cache.rglob("*.cubin"))
        again = session.engine.runner.compile_ahead()
        print(json.dumps({"first": first, "again": again, "new": sorted(set(after) - set(before))}))
    """)
    env = {**os.environ, "TRITON_CACHE_DIR": str(tmp_path / "triton"), "LIVECC_CACHE": str(tmp_path / "livecc")}
    env.pop("TRITON_INTERPRET", None)
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["first"]["launches"] > 10 and report["first"]["failed"] == 0 and not report["first"]["cached"]
    assert report["again"]["cached"] and not report["new"], report


def test_twenty_training_steps_follow_the_cpu_loss_curve(tmp_path):
    """The same 20 steps in fp32 on the CPU and in bf16 on the GPU (kernels, gradient checkpointing
    and all): the curves agree within bf16 noise."""
    from livecc.data.records import RecordWriter
    from livecc.data.synth import synthesize_clip
    from livecc.train import Trainer, load_config

    with RecordWriter(tmp_path / "train.jsonl") as w:
        for i in range(8):
            w.write(synthesize_clip(tmp_path, f"c{i}", seed=i, duration=8.0, size=(112, 112)))
    runs = {"cpu": ["device=\"cpu\""], "cuda": ["device=\"cuda\"", "fused_ops=false"],
            # every optimisation on: GPU decoding in threads, fused kernels, selective checkpointing, compile
            "cuda, all on": ["device=\"cuda\"", "decode_device=\"cuda\"", "fused_ops=true",
                             "checkpoint_policy=\"selective\"", "compile=true"]}
    curves = {}
    for name, options in runs.items():
        overrides = [f"data=[\"{tmp_path / 'train.jsonl'}\"]", f"video_root=\"{tmp_path}\"", "max_steps=20",
                     "global_batch_clips=2", "lr=0.001", "gradient_checkpointing=true",
                     f"output_dir=\"{tmp_path / name.replace(', ', '-')}\"", "min_pixels=12544", "max_pixels=12544",
                     *options]
        curves[name] = torch.tensor([m["loss"] for m in Trainer(load_config(None, overrides)).fit()["history"]])
    for name in ("cuda", "cuda, all on"):
        assert len(curves[name]) == 20 and curves[name][-1] < curves[name][0]
        torch.testing.assert_close(curves[name], curves["cpu"], rtol=5e-2, atol=5e-2)


@pytest.mark.parametrize("policy", ["full", "selective"])
def test_training_steps_with_activation_checkpointing_and_a_first_probe(tmp_path, monkeypatch, policy):
    """Every user's first run: no attention choice cached yet, so the dispatcher probes its
    candidates inside the checkpointed blocks (and their recomputation); five bf16 steps with the
    fused kernels train, and the probe's choices are on disk."""
    from livecc.data.records import RecordWriter
    from livecc.data.synth import synthesize_clip
    from livecc.train import Trainer, load_config

    attention = importlib.import_module("livecc.kernels.varlen_attention")  # the package: its name is also a function's
    monkeypatch.setenv("LIVECC_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(attention, "_dispatchers", {})
    with RecordWriter(tmp_path / "train.jsonl") as w:
        for i in range(4):
            w.write(synthesize_clip(tmp_path, f"c{i}", seed=i, duration=6.0, size=(112, 112)))
    overrides = [f"data=[\"{tmp_path / 'train.jsonl'}\"]", f"video_root=\"{tmp_path}\"", "max_steps=5",
                 "global_batch_clips=2", "lr=0.001", "gradient_checkpointing=true", f"checkpoint_policy=\"{policy}\"",
                 "device=\"cuda\"", "fused_ops=true", f"output_dir=\"{tmp_path / 'run'}\"", "min_pixels=12544",
                 "max_pixels=12544"]
    losses = [m["loss"] for m in Trainer(load_config(None, overrides)).fit()["history"]]
    assert len(losses) == 5 and all(math.isfinite(x) for x in losses)
    probed = list((tmp_path / "cache").glob("attention-*.json"))
    assert probed and json.loads(probed[0].read_text())


def test_text_only_loss_on_cuda_equals_hugging_face(processor):
    model = tiny_qwen_vl(seed=0).cuda()
    use_livecc_attention(model)
    ids, grid, pixels, pos = video_doc()
    labels = torch.where(torch.rand(ids.shape, device="cuda") < 0.3, ids, -100)
    ours = text_only_causal_lm_loss(model, input_ids=ids[None], labels=labels[None], position_ids=pos[:, None],
                                    pixel_values_videos=pixels, video_grid_thw=grid)
    theirs = model(input_ids=ids[None], labels=labels[None], position_ids=pos[:, None], pixel_values_videos=pixels,
                   video_grid_thw=grid).loss
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)


def test_the_demo_runs_on_the_gpu(tmp_path, capsys):
    from livecc.demo import DemoConfig, run_demo

    result = run_demo(DemoConfig(out=str(tmp_path), train_clips=8, test_clips=1, steps=40, realtime=False))
    printed = capsys.readouterr().out
    assert torch.cuda.get_device_name() in printed  # it says where it ran
    scores = result["scores"]
    assert scores["trained"]["f1"] >= scores["untrained"]["f1"]
