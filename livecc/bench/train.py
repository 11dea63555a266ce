"""P5: training-step tokens/s, MFU and peak memory on LiveCC-shaped packs, each optimisation
switchable, against the reference stack.

Random-weight Qwen2-VL models at the 2B shape (full fine-tune: forward, backward, AdamW step) and
the 7B shape (forward + backward), frozen ViT, bf16, at packs of 8k, 16k and 32k tokens (clips of
``--seconds`` video, ~110 tokens a second, filled into the pack). Variants:
- ``livecc``: one packed varlen row, livecc attention, text-only cross-entropy, the fused rotary
  kernel (+ Liger's RMSNorm / SwiGLU when installed), selective activation checkpointing;
- ``livecc full-ac`` / ``livecc no-ac``: full or no activation checkpointing instead;
- ``livecc unfused``: without the fused rotary / norm kernels;
- ``livecc compiled``: with each decoder layer compiled (regional ``torch.compile``);
- ``reference``: the Hugging Face model with FlashAttention-2 when installed (else SDPA), Liger's
  kernels and fused linear cross-entropy, full checkpointing, one clip per forward (unpacked).
MFU counts what the step must compute (``livecc.train.flops``: the LLM's matrix products, the LM
head on the labelled rows only, attention by the clips' lengths, the frozen ViT's forward); HFU
adds what checkpointing and the flash backward compute again. Both are printed. The reference's
head on every row is in neither: its MFU is counted on the same model FLOPs.
A variant that runs out of memory is a row saying so.

    livecc bench train                     # needs a GPU
    livecc bench train --shapes tiny       # the same code on CPU with a tiny model (a smoke run)
"""

from __future__ import annotations

import argparse
import time

import torch

from ..models import TextOnlyHead, patch, text_only_causal_lm_loss, tiny_qwen_vl
from ..qwen_vl import mrope_position_ids
from ..train.flops import FlopAccount
from ..train.metrics import step_throughput
from ..train.parallelize import apply_activation_checkpointing, apply_compile
from .measure import random_qwen2vl, reference_attention
from .results import Plot, Sweep, on_gpu

VIDEO_PAD = 151656
# name -> (fused kernels, activation checkpointing policy or None, compiled layers); "reference" is its own path
VARIANTS = {"livecc": (True, "selective", False), "livecc compiled": (True, "selective", True),
            "livecc full-ac": (True, "full", False), "livecc no-ac": (True, None, False),
            "livecc unfused": (False, "selective", False), "reference": (True, "full", False)}
FULL_FINETUNE = {"qwen2vl-2b": True, "qwen2vl-7b": False, "tiny": True}


def clip(seconds: int, text_frac: float, g: torch.Generator):
    """A LiveCC-shaped clip: 1 s windows of 2 frames (16x24 patches -> 96 LLM tokens) and words."""
    per_window_text = max(1, int(96 * text_frac / (1 - text_frac)))
    ids, grids = [], []
    for _ in range(seconds):
        ids += torch.randint(0, 150000, (8,), generator=g).tolist() + [VIDEO_PAD] * 96
        ids += torch.randint(0, 150000, (per_window_text,), generator=g).tolist()
        grids.append([1, 16, 24])
    ids = torch.tensor(ids)
    grid = torch.tensor(grids)
    labels = torch.where(ids == VIDEO_PAD, -100, ids)
    labels[torch.rand(ids.numel(), generator=g) < 0.5] = -100  # prompts and Time= strings carry no loss
    pos, _ = mrope_position_ids(ids, {VIDEO_PAD: grid})
    pixels = torch.randn(int(grid.prod(-1).sum()), 1176, generator=g, dtype=torch.float32)
    return ids, labels, pos, grid, pixels


def fill(pack_tokens: int, seconds: int, g: torch.Generator) -> list:
    """Clips until the next would overflow ``pack_tokens`` (at least one)."""
    clips, size = [], 0
    while True:
        c = clip(seconds, 0.06, g)
        if clips and size + c[0].numel() > pack_tokens:
            return clips
        clips.append(c)
        size += c[0].numel()


def build(shape: str, attn: str, device: torch.device):
    if shape == "tiny":
        model = tiny_qwen_vl(seed=0, attn_implementation=attn).to(device)
    else:
        model = random_qwen2vl(shape, attn)
    model.model.visual.requires_grad_(False)
    return model.train()


def measure(variant: str, shape: str, clips: list, steps: int, device: torch.device) -> dict:
    from ..data.packing import pack_samples
    from ..data.sequence import StreamingSample

    fused, policy, compiled = VARIANTS[variant]
    reference = variant == "reference"
    model = build(shape, reference_attention() if reference and device.type == "cuda" else "sdpa", device)
    dtype = next(model.parameters()).dtype
    if policy:
        apply_activation_checkpointing(model, policy)
    if compiled:
        apply_compile(model)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-5) if FULL_FINETUNE[shape] else None
    if reference:
        forward_backward = _reference_step(model, clips, device, dtype)
    else:
        patch(model, loss=False, fused_ops=fused and device.type == "cuda")
        head = TextOnlyHead(model.lm_head)
        pack = pack_samples([StreamingSample(i, lab, pos, px.to(dtype), grid, [], "")
                             for i, lab, pos, grid, px in clips])

        def forward_backward():
            loss = text_only_causal_lm_loss(model, labels=pack.labels, head=head,
                                            **pack.model_inputs(device, grids_on_host=True))
            loss.backward()

    def step():
        forward_backward()
        if opt is not None:
            opt.step()
        model.zero_grad(set_to_none=True)

    step()  # warm-up: compiles kernels (and layers), allocates
    step()
    _sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    _sync(device)
    seconds = (time.perf_counter() - t0) / steps
    lengths = [c[0].numel() for c in clips]
    flops = FlopAccount(model, policy, flash_backward=device.type == "cuda")(
        lengths, sum(int((c[1][1:] != -100).sum()) for c in clips), [g for c in clips for g in c[3].tolist()])
    tokens = sum(lengths)
    return {"clips": len(clips), "tokens": tokens, "step_ms": seconds * 1e3,
            **step_throughput(tokens, seconds, flops.model, flops.hardware, device)}


def _reference_step(model, clips: list, device: torch.device, dtype: torch.dtype):
    """The reference stack's step: Liger's kernels and fused linear cross-entropy on CUDA (plain
    cross-entropy elsewhere), one clip per forward."""
    if device.type == "cuda":
        from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss, apply_liger_kernel_to_qwen2_vl

        apply_liger_kernel_to_qwen2_vl(rope=True, rms_norm=True, swiglu=True, cross_entropy=False,
                                       fused_linear_cross_entropy=False, layer_norm=False, model=model)
        flce = LigerFusedLinearCrossEntropyLoss()
        loss_fn = lambda hidden, labels: flce(model.lm_head.weight, hidden, labels)
    else:
        loss_fn = lambda hidden, labels: torch.nn.functional.cross_entropy(model.lm_head(hidden).float(), labels)

    def forward_backward():
        for ids, lab, pos, grid, px in clips:
            hidden = model.model(input_ids=ids[None].to(device), position_ids=pos[:, None].to(device),
                                 pixel_values_videos=px.to(device, dtype), video_grid_thw=grid.to(device),
                                 use_cache=False).last_hidden_state[0, :-1]
            loss_fn(hidden, lab[1:].to(device)).backward()

    return forward_backward


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def run(argv=()) -> Sweep | None:
    parser = argparse.ArgumentParser(prog="livecc bench train", description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", default="qwen2vl-2b,qwen2vl-7b", help="qwen2vl-2b, qwen2vl-7b or tiny (CPU)")
    parser.add_argument("--packs", default=None, help="pack sizes in tokens (default 8192,16384,32768; tiny 600,1200)")
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"any of {', '.join(VARIANTS)}")
    parser.add_argument("--seconds", type=int, default=20, help="clip length: ~110 tokens per second")
    parser.add_argument("--steps", type=int, default=3)
    args = parser.parse_args(list(argv))
    shapes, variants = args.shapes.split(","), args.variants.split(",")
    unknown = [v for v in variants if v not in VARIANTS] + [s for s in shapes if s not in FULL_FINETUNE]
    if unknown:
        parser.error(f"unknown shapes or variants: {unknown}")
    if not on_gpu() and shapes != ["tiny"]:
        print("train needs a GPU for the real shapes (--shapes tiny runs on CPU)")
        return None
    device = torch.device("cuda" if on_gpu() else "cpu")
    default_packs = "600,1200" if shapes == ["tiny"] else "8192,16384,32768"
    seconds = 2 if shapes == ["tiny"] else args.seconds
    rows = []
    for shape in shapes:
        for pack_tokens in (int(n) for n in (args.packs or default_packs).split(",")):
            clips = fill(pack_tokens, seconds, torch.Generator().manual_seed(0))
            for variant in variants:
                row = {"shape": shape, "pack": pack_tokens, "variant": variant, "full_finetune": FULL_FINETUNE[shape]}
                try:
                    row.update(measure(variant, shape, clips, args.steps, device))
                except torch.OutOfMemoryError:
                    row["error"] = "out of memory"
                rows.append(row)
                if device.type == "cuda":
                    torch.cuda.empty_cache()
    for r in rows:
        ref = next((x for x in rows if (x["shape"], x["pack"], x["variant"]) == (r["shape"], r["pack"], "reference")
                    and "tokens_per_s" in x), None)
        if ref and "tokens_per_s" in r:
            r["speedup_vs_reference"] = r["tokens_per_s"] / ref["tokens_per_s"]
        r["series"] = f"{r['shape']} {r['pack']}"
    notes = (f"Clips of {seconds} s (~6% text) filled into each pack, random weights, frozen ViT, "
             f"{'bf16' if device.type == 'cuda' else 'fp32 on CPU'}. 2B: full fine-tune incl. AdamW; 7B: forward+"
             "backward. Variants, MFU and HFU: see livecc/bench/train.py.")
    cols = ["shape", "pack", "variant", "clips", "tokens", "step_ms", "tokens_per_s", "mfu", "hfu", "max_memory_gb",
            "speedup_vs_reference", "error"]
    headline = [{"target": f"P5 {r['shape']} {r['pack']}",
                 "figure": f"{r['tokens_per_s']:.0f} tokens/s"
                 + (f", MFU {r['mfu']:.1%} (HFU {r['hfu']:.1%})" if r["mfu"] else "")
                 + (f", {r['speedup_vs_reference']:.2f}x" if "speedup_vs_reference" in r else "")}
                for r in rows if r["variant"] == "livecc" and "tokens_per_s" in r]
    return Sweep("train", rows, cols, notes, Plot("variant", "tokens_per_s", "series", "tokens/s"), headline)
