"""P5: training-step tokens/s and MFU on LiveCC-shaped packs, livecc against the reference stack.

Random-weight Qwen2-VL LLMs at the 2B shape (full fine-tune: forward, backward, AdamW step) and
the 7B shape (forward + backward), frozen ViT, in one run:
- ``livecc``: one packed varlen row of several clips, livecc attention, text-only cross-entropy,
  Liger's RMSNorm / SwiGLU / M-RoPE;
- ``reference``: the Hugging Face model with FlashAttention-2 when installed (else SDPA), Liger's
  fused linear cross-entropy and kernels, one clip per step (batch 1, unpacked).
MFU counts 6 x trainable LLM parameters x tokens (2x for forward only of the frozen ViT patches).

    livecc bench train            # needs a GPU
"""

from __future__ import annotations

import argparse
import time

import torch

from ..qwen2vl import mrope_position_ids
from .measure import PEAK, random_qwen2vl, reference_attention
from .results import Plot, Sweep, on_gpu

VIDEO_PAD = 151656


def build(shape: str, attn: str):
    model = random_qwen2vl(shape, attn)
    model.model.visual.requires_grad_(False)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return model.train()


def clip(seconds: int, text_frac: float, g: torch.Generator):
    """A LiveCC-shaped clip: 1 s windows of 2 frames (16x24 patches -> 96 LLM tokens) and words."""
    windows = seconds
    per_window_text = max(1, int(96 * text_frac / (1 - text_frac)))
    ids, grids = [], []
    for _ in range(windows):
        ids += torch.randint(0, 150000, (8,), generator=g).tolist() + [VIDEO_PAD] * 96
        ids += torch.randint(0, 150000, (per_window_text,), generator=g).tolist()
        grids.append([1, 16, 24])
    ids = torch.tensor(ids)
    grid = torch.tensor(grids)
    labels = torch.where(ids == VIDEO_PAD, -100, ids)
    labels[torch.rand(ids.numel(), generator=g) < 0.5] = -100  # prompts and Time= strings carry no loss
    pos, _ = mrope_position_ids(ids, grid, (VIDEO_PAD,))
    pixels = torch.randn(int(grid.prod(-1).sum()), 1176, generator=g, dtype=torch.float32)
    return ids, labels, pos, grid, pixels


def measure(provider: str, shape: str, clips: list, full_finetune: bool, steps: int, ref_attn: str) -> dict:
    from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss, apply_liger_kernel_to_qwen2_vl

    from livecc.data.packing import pack_samples
    from livecc.data.sequence import StreamingSample
    from livecc.models import TextOnlyHead, text_only_causal_lm_loss, use_livecc_attention

    model = build(shape, "sdpa" if provider == "livecc" else ref_attn)
    apply_liger_kernel_to_qwen2_vl(rope=True, rms_norm=True, swiglu=True, cross_entropy=False,
                                   fused_linear_cross_entropy=False, layer_norm=False, model=model)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-5) if full_finetune else None
    if provider == "livecc":
        use_livecc_attention(model)
        head = TextOnlyHead(model.lm_head)
        pack = pack_samples([StreamingSample(i, lab, pos, px.bfloat16(), grid, [], "")
                             for i, lab, pos, grid, px in clips])

        def forward_backward():
            loss = text_only_causal_lm_loss(model, labels=pack.labels.cuda(), head=head, **pack.model_inputs("cuda"))
            loss.backward()
    else:
        flce = LigerFusedLinearCrossEntropyLoss()

        def forward_backward():
            for ids, lab, pos, grid, px in clips:  # batch 1, one clip per forward
                hidden = model.model(input_ids=ids[None].cuda(), position_ids=pos[:, None].cuda(),
                                     pixel_values_videos=px.cuda().bfloat16(), video_grid_thw=grid.cuda(),
                                     use_cache=False).last_hidden_state[0, :-1]
                flce(model.lm_head.weight, hidden, lab[1:].cuda()).backward()

    def step():
        forward_backward()
        if opt is not None:
            opt.step()
        model.zero_grad(set_to_none=True)

    step()  # warm-up: compiles kernels, allocates
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    torch.cuda.synchronize()
    seconds = (time.perf_counter() - t0) / steps
    tokens = sum(c[0].numel() for c in clips)
    patches = sum(c[4].shape[0] for c in clips)
    vit = sum(p.numel() for p in model.model.visual.parameters())
    flops = 6 * sum(p.numel() for p in params) * tokens + 2 * vit * patches
    return {"shape": shape, "provider": provider, "attention": "livecc" if provider == "livecc" else ref_attn,
            "full_finetune": full_finetune, "clips": len(clips), "tokens": tokens, "step_ms": seconds * 1e3,
            "tokens_per_s": tokens / seconds, "mfu": flops / seconds / PEAK,
            "peak_memory_gb": torch.cuda.max_memory_allocated() / 2**30}


def compare(shape: str, n_clips: int, seconds: int, full_finetune: bool, steps: int) -> list[dict]:
    g = torch.Generator().manual_seed(0)
    clips = [clip(seconds, 0.06, g) for _ in range(n_clips)]
    ref_attn = reference_attention()
    rows = []
    for provider in ("livecc", "reference"):
        rows.append(measure(provider, shape, clips, full_finetune, steps, ref_attn))
        torch.cuda.empty_cache()
    rows[0]["speedup_vs_reference"] = rows[0]["tokens_per_s"] / rows[1]["tokens_per_s"]
    return rows


def run(argv=()) -> Sweep | None:
    parser = argparse.ArgumentParser(prog="livecc bench train", description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=4)
    parser.add_argument("--seconds", type=int, default=60, help="clip length: ~100 tokens per second")
    parser.add_argument("--steps", type=int, default=3)
    args = parser.parse_args(list(argv))
    if not on_gpu():
        print("train needs a GPU")
        return None
    rows = compare("qwen2vl-2b", args.clips, args.seconds, True, args.steps)
    rows += compare("qwen2vl-7b", args.clips, args.seconds, False, args.steps)
    notes = (f"{args.clips} clips of {args.seconds} s per step (~6% text), random weights, bf16, frozen ViT, "
             "gradient checkpointing. 2B: full fine-tune incl. AdamW; 7B: forward+backward.")
    cols = ["shape", "provider", "attention", "tokens", "step_ms", "tokens_per_s", "mfu", "peak_memory_gb",
            "speedup_vs_reference"]
    headline = [{"target": f"P5 {r['shape']}", "goal": "MFU >= 50% (7B) / 45% (2B), >= 2x the reference stack",
                 "figure": f"{r['tokens_per_s']:.0f} tokens/s, MFU {r['mfu']:.1%}, {r['speedup_vs_reference']:.2f}x"}
                for r in rows if r["provider"] == "livecc"]
    return Sweep("train", rows, cols, notes, Plot("shape", "tokens_per_s", "provider", "tokens/s"), headline)
