"""P6-P8: streaming commentary, livecc's session against the reference loop, in one run.

- ``livecc``: ``StreamingSession`` (one ViT call, incremental prefill with 3D positions over the
  paged cache, decode on the paged kernel, no re-tokenization); on GPU its decode steps replay CUDA
  graphs, and a second row runs them eagerly.
- ``reference``: the loop of showlab/livecc's inference: per window the chat template builds the
  user turn, the whole past ids are re-sent and Hugging Face ``generate`` runs with
  ``past_key_values`` (FlashAttention-2 when installed, else SDPA).
Both get the same frames, patch rows (livecc's preprocessing, so the loop is what differs),
windows (3 s, then 1 s at 2 FPS), greedy decoding, repetition penalty 1.05, <= 16 new tokens,
stopping at ``' ...'`` or ``<|im_end|>``.

Measured: per-window latency (p50/p99; GPU: against the physical floor), real-time streams
(N sessions stepped together; sustained while a round of N windows takes < 1 s at p99), memory
over a stream (livecc with a short horizon; the reference's cache growth per window) and a long
stream with the default bounds (cache tokens, largest position and latency after hours), and
cold start (P9: new processes to their first window's text, in phases; :mod:`.cold_start`).
GPU: the 7B Qwen2-VL shape with random bf16 weights, frames at the demo budget (384*28*28 px).
CPU: a tiny random model; only the ratios mean anything.

    livecc bench stream
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from ..infer import KVPool, SessionConfig, StreamingSession, step_streams
from ..infer.census import Census
from ..infer.stream import percentile
from ..kernels import preprocess_frames
from ..models import tiny_qwen_vl, use_livecc_attention
from ..qwen_vl import TokenIds, VisionSpec, expand_pads, offline_processor, smart_resize
from .cold_start import PHASES, cold_starts
from .measure import HBM, PEAK, random_qwen2vl, reference_attention
from .results import Plot, Sweep, on_gpu

MAX_PIXELS = 384 * 28 * 28


def build(gpu: bool, attn: str):
    if gpu:
        return random_qwen2vl("qwen2vl-7b", attn).eval()
    return tiny_qwen_vl(seed=0, attn_implementation=attn).eval()


def kv_bytes_per_token(model) -> int:
    """Keys and values of one token over all layers, in bf16."""
    cfg = model.config.text_config
    return 2 * cfg.num_hidden_layers * cfg.num_key_value_heads * (cfg.hidden_size // cfg.num_attention_heads) * 2


def windows(n: int, size: tuple[int, int], device, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 256, (6 if i == 0 else 2, *size, 3), dtype=torch.uint8, generator=g).to(device)
            for i in range(n)]


def _sync():
    if on_gpu():
        torch.cuda.synchronize()


def reference_loop(model, processor, frames: list[torch.Tensor], query: str) -> list[dict]:
    """showlab/livecc's ``live_cc`` loop on pre-decoded frames; per window: ms, tokens, cache size."""
    tok = processor.tokenizer
    ids, spec = TokenIds.from_tokenizer(tok), VisionSpec.from_processor(processor)
    stops = [tok(" ...", add_special_tokens=False).input_ids[0], ids.im_end]
    probe = [{"role": "user", "content": [{"type": "text", "text": "livecc"}]}]
    offset = processor.apply_chat_template(probe, tokenize=False).index("<|im_start|>user")
    dtype, device = next(model.parameters()).dtype, next(model.parameters()).device
    past_ids, past, clock, rows = None, None, 0.0, []
    for i, window in enumerate(frames):
        _sync()
        t0 = time.perf_counter()
        end = clock + len(window) / 2
        content = [{"type": "text", "text": f"Time={clock:.1f}-{end:.1f}s"}, {"type": "video"}]
        if i == 0:
            content.append({"type": "text", "text": query})
        text = processor.apply_chat_template([{"role": "user", "content": content}], tokenize=False,
                                             add_generation_prompt=True)
        if past_ids is not None:
            text = "<|im_end|>\n" + text[offset:]
        size = smart_resize(*window.shape[1:3], spec.factor, 100 * 28 * 28, MAX_PIXELS)
        pixels, grid = preprocess_frames(window, size, spec, dtype)
        new = expand_pads(torch.tensor(tok(text, add_special_tokens=False).input_ids), ids.video_pad,
                                [int(grid.prod()) // spec.merge_size**2])[None].to(device)
        input_ids = new if past_ids is None else torch.cat([past_ids, new], dim=1)
        out = model.generate(input_ids=input_ids, pixel_values_videos=pixels, video_grid_thw=grid.to(device),
                             past_key_values=past, return_dict_in_generate=True, do_sample=False,
                             repetition_penalty=1.05, max_new_tokens=16, eos_token_id=stops, pad_token_id=stops[1])
        past, past_ids = out.past_key_values, out.sequences[:, :-1]
        _sync()
        rows.append({"ms": (time.perf_counter() - t0) * 1e3, "new_tokens": out.sequences.shape[1] - input_ids.shape[1],
                     "prefill_tokens": new.shape[1], "cache_tokens": past.get_seq_length()})
        clock = end
    return rows


def livecc_loop(model, processor, frames: list[torch.Tensor], query: str, compile_vision: bool = False,
                **options) -> list[dict]:
    session = StreamingSession(model, processor, query=query, max_new_tokens=16, repetition_penalty=1.05,
                               max_pixels=MAX_PIXELS, **options)
    if compile_vision:  # compiles in the first window, which p50/p99 leave out
        session.engine.compile_vision()
    rows = []
    for window in frames:
        r = session.step(window)
        rows.append({"ms": r.timings["total"], "new_tokens": len(r.token_ids), "prefill_tokens": r.prefill_tokens,
                     "cache_tokens": r.cache_tokens, "pool_mb": session.cache.pool.nbytes() / 2**20,
                     "held_mb": session.cache.nbytes() / 2**20, **{f"{k}_ms": v for k, v in r.timings.items()}})
    session.close()
    return rows


def phase_floors(row: dict, llm: int, vit: int, kv_bytes_per_token: int) -> dict:
    """Hardware floors of one window's phases in ms (``llm``/``vit`` parameters): the ViT and the
    prefill at peak FLOP/s or weight-read time, whichever is larger; a decode step's weight and KV
    reads at full HBM bandwidth. ``floor_ms`` is the window's: the first token comes from the
    prefill, the others from ``new_tokens - 1`` decode steps."""
    patches = 4 * row["prefill_tokens"]  # upper bound: every prefill token a merged 2x2 patch group
    vision = max(2 * vit * patches / PEAK, 2 * vit / HBM) * 1e3
    prefill = max(2 * llm * row["prefill_tokens"] / PEAK, 2 * llm / HBM) * 1e3
    per_token = (2 * llm + kv_bytes_per_token * row["cache_tokens"]) / HBM * 1e3
    return {"vision_floor_ms": vision, "prefill_floor_ms": prefill, "decode_floor_ms_per_token": per_token,
            "floor_ms": vision + prefill + (row["new_tokens"] - 1) * per_token}


def gpu_busy(fn) -> float:
    """Fraction of ``fn``'s wall time the GPU spends running kernels (from the profiler's trace)."""
    from torch.profiler import ProfilerActivity, profile

    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        wall_us = (time.perf_counter() - t0) * 1e6
    busy_us = sum(e.self_device_time_total for e in prof.key_averages() if e.self_device_time_total > 0)
    return busy_us / wall_us


# command-line key -> table label, in running order (the ViT compiled stays so: last)
RUNS = {"livecc": "livecc", "eager": "livecc, no CUDA graphs", "vit-compiled": "livecc, ViT compiled",
        "reference": "reference"}


def latency(model, processor, n_windows: int, size, device, runs: tuple = tuple(RUNS)) -> list[dict]:
    frames = windows(n_windows, size, device)
    query = "Please describe the video."
    done = {}
    if "reference" in runs:  # first: the ViT on the reference's attention
        done["reference"] = reference_loop(model, processor, frames, query)
    if on_gpu():  # the ViT on livecc's kernel from here on (on CPU that would be the torch oracle)
        use_livecc_attention(model)
    options = {"livecc": {}, "eager": {"cuda_graphs": False}, "vit-compiled": {"compile_vision": True}}
    for name in (r for r in RUNS if r in runs and r != "reference"):
        if name == "livecc" or on_gpu():  # graphs and compiling are GPU matters
            done[name] = livecc_loop(model, processor, frames, query, **options[name])
    busy = gpu_busy(lambda: livecc_loop(model, processor, frames[:6], query)) if on_gpu() else None
    vit = sum(p.numel() for p in model.model.visual.parameters())
    llm = sum(p.numel() for p in model.parameters()) - vit
    rows = []
    for name, run in ((r, done[r]) for r in RUNS if r in done):
        steady = run[2:]  # the 3 s window and one warm-up window excluded
        row = {"provider": RUNS[name], "windows": len(steady), "p50_ms": percentile([r["ms"] for r in steady], 0.5),
               "p99_ms": percentile([r["ms"] for r in steady], 0.99),
               "new_tokens": statistics.fmean(r["new_tokens"] for r in steady),
               "prefill_tokens": statistics.fmean(r["prefill_tokens"] for r in steady),
               "final_cache_tokens": run[-1]["cache_tokens"]}
        if "vision_ms" in steady[0]:  # livecc's own phase timings
            row.update(preprocess_ms=statistics.median(r["preprocess_ms"] for r in steady),
                       vision_ms=statistics.median(r["vision_ms"] for r in steady),
                       prefill_ms=statistics.median(r["prefill_ms"] for r in steady),
                       decode_ms_per_token=statistics.median(r["decode_ms"] / max(1, r["new_tokens"] - 1)
                                                             for r in steady))
        if on_gpu():
            floors = [phase_floors(r, llm, vit, kv_bytes_per_token(model)) for r in steady]
            row.update({k: statistics.median(f[k] for f in floors) for k in floors[0]})
            row["p50_over_floor"] = row["p50_ms"] / row["floor_ms"]
        rows.append(row)
    if "reference" in done:
        for row in rows[:-1]:
            row["speedup_vs_reference"] = rows[-1]["p50_ms"] / row["p50_ms"]
    if busy is not None:
        rows[0]["gpu_busy"] = busy
    return rows


def streams(model, processor, counts: list[int], n_windows: int, size, device) -> list[dict]:
    """N streams on one engine, stepped together (the pool sized and every decode step built before
    the first window); a round is one window of every stream (1 s of video each). Per N: round
    p50/p99, the real-time margin (the 1 s window period over the p99 round) and the memory held
    per stream (GPU: all allocated; CPU: the KV pool). Stops after the first N whose rounds exceed
    1 s at p99."""
    rows = []
    for n in counts:
        pool = KVPool.for_model(model)
        config = SessionConfig(max_new_tokens=16, max_pixels=MAX_PIXELS)
        sessions = [StreamingSession(model, processor, config, pool=pool) for _ in range(n)]
        sessions[0].engine.warm_up(n, max_tokens=(n_windows + 4) * 420)
        frames = [windows(n_windows, size, device, seed=i) for i in range(n)]
        rounds = []
        for w in range(n_windows):
            _sync()
            t0 = time.perf_counter()
            step_streams(sessions, [f[w] for f in frames])
            _sync()
            rounds.append((time.perf_counter() - t0) * 1e3)
        steady = rounds[2:]
        p99 = percentile(steady, 0.99)
        held = torch.cuda.memory_allocated() / 2**20 if torch.cuda.is_available() else pool.nbytes() / 2**20
        rows.append({"provider": "livecc, N streams", "streams": n, "round_p50_ms": percentile(steady, 0.5),
                     "round_p99_ms": p99, "real_time": p99 < 1000.0, "margin": 1000.0 / p99,
                     "pool_mb": pool.nbytes() / 2**20, "mb_per_stream": held / n})
        for s in sessions:
            s.close()
        if p99 >= 1000.0:
            break
    one = rows[0]["round_p50_ms"]
    for row in rows:
        row["vs_one_at_a_time"] = row["streams"] * one / row["round_p50_ms"]
    return rows


def memory(model, processor, n_windows: int, horizon: float, text_tokens: int, size, device) -> list[dict]:
    frames = windows(n_windows, size, device, seed=7)
    rows = livecc_loop(model, processor, frames, "Describe.", horizon=horizon, max_text_tokens=text_tokens,
                       text_sink=64)
    return [{"window": i, "cache_tokens": r["cache_tokens"], "held_mb": r["held_mb"], "pool_mb": r["pool_mb"],
             "evict_ms": r["evict_ms"]}
            for i, r in enumerate(rows) if i % max(1, n_windows // 12) == 0 or i == n_windows - 1]


def long_stream(model, processor, hours: list[float], size, device, pixels: int | None) -> list[dict]:
    """One stream with the default bounds through ``max(hours)`` hours of one-second windows (one
    window's frames reused: what matters is how the cache and positions behave): at each hour, its
    cache tokens, its largest position so far and the window latency over the last 100 windows."""
    options = {} if pixels is None else {"min_pixels": pixels, "max_pixels": pixels}
    session = StreamingSession(model, processor, SessionConfig(**options))
    first, later = windows(2, size, device, seed=11)
    marks, rows, latencies, largest = {max(1, round(h * 3600)) for h in hours}, [], [], 0
    started = time.perf_counter()
    for w in range(1, max(marks) + 1):
        result = session.step(first if w == 1 else later)
        latencies = (latencies + [result.timings["total"]])[-100:]
        largest = max(largest, result.next_position)
        if w % 3600 == 0:
            print(f"long stream: {w // 3600} of {max(marks) / 3600:g} h, {result.cache_tokens} cache tokens, "
                  f"largest position {largest} ({time.perf_counter() - started:.0f} s)", flush=True)
        if w in marks:
            rows.append({"provider": "livecc, long stream", "stream_hours": w / 3600,
                         "cache_tokens": result.cache_tokens, "largest_position": largest,
                         "p50_ms": percentile(latencies, 0.5), "p99_ms": percentile(latencies, 0.99),
                         "evicted_tokens": session.cache.evicted})
    session.close()
    return rows


def census(model, processor, *, streams: int = 2, windows: int = 4, size=(56, 56), max_new_tokens: int = 3,
           seed: int = 0) -> tuple[Census, list]:
    """A :class:`~livecc.infer.census.Census` of ``windows`` rounds of ``streams`` streams on the GPU
    code path (the static ViT, prefill and decode steps: replayed graphs on a GPU, eager here) ->
    (the census, the last round's results). The first two rounds build the steps (a first window,
    then the next's frame count); later ones are the steady state."""
    g = torch.Generator().manual_seed(seed)
    device = next(model.parameters()).device
    pixels = size[0] * size[1]
    with Census(model) as counted:
        pool = KVPool.for_model(model, page_size=16)
        sessions = [StreamingSession(model, processor, pool=pool, max_new_tokens=max_new_tokens, seed=i,
                                     min_pixels=pixels, max_pixels=pixels) for i in range(streams)]
        sessions[0].engine.runner.use_static_steps()
        for _ in range(windows):
            frames = [torch.randint(0, 256, (s.frames_needed, *size, 3), dtype=torch.uint8, generator=g).to(device)
                      for s in sessions]
            results = step_streams(sessions, frames)
    return counted, results


def census_rows(processor, device, windows: int = 6) -> list[dict]:
    """The steady state's census per phase, of a tiny model and of one of the 7B's depth (28
    decoder layers, 32 ViT blocks) at small widths: counts depend on depth, not width."""
    rows = []
    for name, depth in (("tiny", (2, 2)), ("7b-depth", (28, 32))):
        model = tiny_qwen_vl(seed=0, num_layers=depth[0], vision_depth=depth[1]).to(device, torch.bfloat16)
        use_livecc_attention(model)
        counted, results = census(model, processor, windows=windows)
        steps = max(len(r.token_ids) for r in results)
        for phase, counts in counted.totals(slice(2, None)).items():
            rows.append({"provider": "census", "model": name, "phase": phase, "decode_steps": steps,
                         **{k: round(counts.get(k, 0.0), 2) for k in ("launches", "reads", "uploads", "captured")}})
    return rows


def options(argv=()) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="livecc bench stream", description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--windows", type=int, default=30, help="windows per latency run")
    parser.add_argument("--runs", default=",".join(RUNS),
                        help="comma-separated latency runs, of: " + "; ".join(f"{k} ({v})" for k, v in RUNS.items()))
    parser.add_argument("--streams", default="1,8,16,32,64,128" if on_gpu() else "1,2,4",
                        help="stream counts stepped together ('' for none)")
    parser.add_argument("--memory-windows", type=int, default=300 if on_gpu() else 60, help="0 for no memory run")
    parser.add_argument("--census", type=int, default=6, help="rounds of 2 streams counted per phase (launches "
                        "outside graphs, device reads) on the GPU code path; 0 for none")
    parser.add_argument("--cold-start", default="cold,warm", help="new processes timed to their first window's "
                        "text: cold (empty Triton and livecc caches), warm (the same caches again); '' for none")
    parser.add_argument("--long-hours", default="1", help="hours of one-second windows for the long-stream rows "
                        "(e.g. 1,10; '' for none). CPU: 56x56 frames")
    args = parser.parse_args(list(argv))
    args.runs = tuple(args.runs.split(","))
    args.cold_start = tuple(r for r in args.cold_start.split(",") if r)
    if set(args.cold_start) - {"cold", "warm"}:
        parser.error(f"--cold-start takes cold and warm, not {','.join(args.cold_start)!r}")
    if "livecc" not in args.runs or set(args.runs) - set(RUNS):
        parser.error(f"--runs takes livecc and any of {', '.join(RUNS)}, not {','.join(args.runs)!r}")
    return args


def run(argv=()) -> Sweep:
    args = options(argv)
    runs = args.runs
    gpu = on_gpu()
    device = "cuda" if gpu else "cpu"
    size = (360, 640) if gpu else (90, 120)
    processor = offline_processor()
    starts = cold_starts(args.cold_start) if args.cold_start else []  # first: nothing of this process in them
    counted = census_rows(processor, device, args.census) if args.census else []
    attn = reference_attention() if gpu else "sdpa"
    model = build(gpu, attn)
    lat = latency(model, processor, args.windows, size, device, runs)
    for row in lat:
        row["reference_attention"] = attn
    counts = [int(n) for n in args.streams.split(",") if n]
    many = streams(model, processor, counts, max(8, args.windows // 3), size, device) if counts else []
    horizon, text_tokens = (60.0, 4096) if gpu else (10.0, 512)
    mem = memory(model, processor, args.memory_windows, horizon, text_tokens, size, device) \
        if args.memory_windows else []
    hours = [float(h) for h in args.long_hours.split(",") if h]
    long = long_stream(model, processor, hours, size if gpu else (56, 56), device, None if gpu else 56 * 56) \
        if hours else []
    notes = (f"{'7B Qwen2-VL shape, random bf16 weights' if gpu else 'tiny random Qwen2-VL on CPU (ratios only)'}; "
             f"frames {size[0]}x{size[1]}, max_pixels 384*28*28, {args.windows} windows (first two excluded from "
             "p50/p99).")
    if "reference" in runs:
        ref_growth = lat[-1]["final_cache_tokens"] / (args.windows + 2)  # tokens per stream second
        notes += (f" The reference's cache grows {ref_growth:.0f} tokens per stream second = "
                  f"{ref_growth * kv_bytes_per_token(model) * 3600 / 2**30:.1f} GiB per hour (bf16), never evicted.")
    if mem:
        notes += (f" livecc's memory run: visual horizon {horizon:.0f} s, old text capped at {text_tokens} tokens "
                  f"(64 sink), over {args.memory_windows} windows.")
    cols = ["provider", "windows", "p50_ms", "p99_ms", "floor_ms", "p50_over_floor", "preprocess_ms", "vision_ms",
            "vision_floor_ms", "prefill_ms", "prefill_floor_ms", "decode_ms_per_token", "decode_floor_ms_per_token",
            "gpu_busy", "new_tokens", "prefill_tokens",
            "speedup_vs_reference", "streams", "round_p50_ms", "round_p99_ms", "real_time", "margin",
            "mb_per_stream", "vs_one_at_a_time",
            "window", "cache_tokens", "held_mb", "pool_mb", "evict_ms", "stream_hours", "largest_position",
            "evicted_tokens", "model", "phase", "decode_steps", "launches", "reads", "uploads", "captured",
            "run", *PHASES, "total_s"]
    ours = lat[0]
    headline = [
        {"target": "P6",
         "figure": f"p50 {ours['p50_ms']:.1f} ms, p99 {ours['p99_ms']:.1f} ms"
                   + (f", {ours['speedup_vs_reference']:.2f}x reference" if "speedup_vs_reference" in ours else "")
                   + (f", floor {ours['floor_ms']:.1f} ms = {ours['p50_over_floor']:.2f}x" if "floor_ms" in ours
                      else "")
                   + (f", GPU busy {ours['gpu_busy']:.0%}" if "gpu_busy" in ours else "")}]
    if many:
        real_time = [r["streams"] for r in many if r.get("real_time")]
        held = max(real_time, default=0)
        margin = next((f", margin {r['margin']:.2f}x, {r['mb_per_stream']:.0f} MB per stream" for r in many
                       if r["streams"] == held), "")
        headline.append({"target": "P7",
                         "figure": f"real time up to {held} of {[r['streams'] for r in many]} streams{margin}"})
    if mem:
        headline.append({"target": "P8",
                         "figure": f"held {mem[len(mem) // 2]['held_mb']:.2f} -> {mem[-1]['held_mb']:.2f} MB "
                                   "(mid -> last window)"})
    if long:
        headline.append({"target": "P8 long stream",
                         "figure": "; ".join(f"{r['stream_hours']:g} h: {r['cache_tokens']} tokens, largest position "
                                             f"{r['largest_position']}, p50 {r['p50_ms']:.1f} ms" for r in long)})
    if counted:
        per = {(r["model"], r["phase"]): r for r in counted}
        headline.append({"target": "P6 host path",
                         "figure": "; ".join(f"{m}: ViT {per[m, 'vision']['launches']:g} launches outside its graph "
                                             f"({per[m, 'vision']['captured']:g} captured), reads: ViT "
                                             f"{per[m, 'vision']['reads']:g}, prefill {per[m, 'prefill']['reads']:g}, "
                                             f"decode {per[m, 'decode']['reads']:g} in "
                                             f"{per[m, 'decode']['decode_steps']} steps, end "
                                             f"{per[m, 'end']['reads']:g}" for m in ("tiny", "7b-depth"))})
    if starts:
        headline.append({"target": "P9", "figure": "; ".join(
            f"{r['run']}: {r['total_s']:.1f} s to the first window's text (" + ", ".join(
                f"{p.removesuffix('_s').replace('_', ' ')} {r[p]:.1f} s" for p in PHASES) + ")" for r in starts)})
        notes += (" Cold start: " + ("the 7B shape built with random weights on the GPU (no checkpoint read)"
                                     if gpu else "the tiny model on the CPU") + ".")
    plot = Plot("streams", "round_p50_ms", "provider", "round p50, ms") if many else None
    return Sweep("stream", lat + many + mem + long + counted + starts, cols, notes, plot, headline)
