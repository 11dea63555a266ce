"""P1/P2: varlen attention on LiveCC-shaped packs, against PyTorch's FlashAttention-2 varlen,
FlexAttention with a document mask, SDPA per sequence, xformers and flash-attn when they import.

FLOPs (``docs/performance.md``): forward 4 * sum_i(s_i^2) * Hq * D (x0.5 causal), backward 2.5x forward.

    livecc bench attention [--shapes llm-1x16k,vit-64x1536] [--providers livecc,sdpa_cudnn]   # needs a GPU
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

from ..kernels import cu_seqlens, varlen_attention
from ..kernels.varlen_attention.backends import BACKENDS, torch_varlen_call
from .measure import median_ms
from .results import Plot, Sweep, on_gpu

# (name, document lengths, q heads, kv heads, head dim, causal)
SHAPES = [
    ("llm-1x16k", [16384], 28, 4, 128, True),
    ("llm-1x24k", [24576], 28, 4, 128, True),
    ("llm-2x8k", [8192, 8192], 28, 4, 128, True),
    ("llm-4-mixed", [2048, 6144, 12288, 4096], 28, 4, 128, True),
    ("vit-64x1536", [1536] * 64, 16, 16, 80, False),
    ("vit-mixed-groups", [324, 660, 1200, 1600, 300, 896] * 12, 16, 16, 80, False),
    ("vit3-64x1024", [1024] * 64, 16, 16, 72, False),  # Qwen3-VL's ViT: 1152 wide, 16 heads of 72
]


def flops(lengths, hq, d, causal, phase):
    fwd = 4 * sum(s * s for s in lengths) * hq * d * (0.5 if causal else 1.0)
    return {"fwd": fwd, "bwd": 2.5 * fwd, "fwd+bwd": 3.5 * fwd}[phase]


def _expand_kv(k, hq):
    return k.repeat_interleave(hq // k.shape[1], dim=1)


def providers(lengths, hq, hkv, d, causal, device):
    cu = cu_seqlens(lengths, device)
    max_len = max(lengths)
    found = {"livecc": lambda q, k, v: varlen_attention(q, k, v, cu, cu, max_len, max_len, causal=causal,
                                                        backend="triton", deterministic=False),
             "livecc_deterministic": lambda q, k, v: varlen_attention(q, k, v, cu, cu, max_len, max_len,
                                                                      causal=causal, deterministic=True),
             "livecc_auto": lambda q, k, v: varlen_attention(q, k, v, cu, cu, max_len, max_len, causal=causal)}
    for name in ("sdpa_cudnn", "sdpa_flash"):  # PyTorch's SDPA with one backend forced
        found[name] = lambda q, k, v, name=name: BACKENDS[name](q, k, v, cu, cu, max_len, max_len, causal,
                                                                 q.shape[-1] ** -0.5)
    try:
        from torch.nn.attention.varlen import varlen_attn

        fa2 = torch_varlen_call(varlen_attn)
        scale = d**-0.5
        found["torch_varlen_fa2"] = lambda q, k, v: fa2(q, k, v, cu, cu, max_len, max_len, causal, scale)
    except ImportError:
        pass
    try:
        from torch.nn.attention.flex_attention import create_block_mask, flex_attention

        doc = torch.repeat_interleave(torch.arange(len(lengths), device=device), torch.tensor(lengths, device=device))

        def mask_mod(b, h, qi, ki):
            same = doc[qi] == doc[ki]
            return same & (qi >= ki) if causal else same

        total = sum(lengths)
        block_mask = create_block_mask(mask_mod, None, None, total, total, device=device)
        flex = torch.compile(flex_attention)
        found["flex_document_mask"] = lambda q, k, v: flex(
            q.transpose(0, 1)[None], k.transpose(0, 1)[None], v.transpose(0, 1)[None], block_mask=block_mask,
            enable_gqa=hq != hkv)[0].transpose(0, 1)
    except Exception as e:  # flex needs a working compile toolchain
        print(f"flex attention unavailable: {e}")

    def sdpa_per_sequence(q, k, v):
        outs, start = [], 0
        for s in lengths:
            sl = slice(start, start + s)
            outs.append(F.scaled_dot_product_attention(
                q[sl].transpose(0, 1)[None], k[sl].transpose(0, 1)[None], v[sl].transpose(0, 1)[None],
                is_causal=causal, enable_gqa=hq != hkv)[0].transpose(0, 1))
            start += s
        return torch.cat(outs)

    found["sdpa_per_sequence"] = sdpa_per_sequence
    try:
        from flash_attn import flash_attn_varlen_func

        found["flash_attn"] = lambda q, k, v: flash_attn_varlen_func(q, k, v, cu, cu, max_len, max_len, causal=causal)
    except ImportError:
        pass
    try:
        from xformers.ops import fmha

        bias = (fmha.attn_bias.BlockDiagonalCausalMask if causal else fmha.attn_bias.BlockDiagonalMask).from_seqlens(
            lengths)
        found["xformers"] = lambda q, k, v: fmha.memory_efficient_attention(
            q[None], _expand_kv(k, hq)[None], _expand_kv(v, hq)[None], attn_bias=bias)[0]
    except ImportError:
        pass
    return found


def run_shape(name, lengths, hq, hkv, d, causal, only: list[str] | None = None) -> list[dict]:
    device, dtype = "cuda", torch.bfloat16
    total = sum(lengths)
    g = torch.Generator(device=device).manual_seed(0)
    q = torch.randn(total, hq, d, device=device, dtype=dtype, generator=g).requires_grad_()
    k = torch.randn(total, hkv, d, device=device, dtype=dtype, generator=g).requires_grad_()
    v = torch.randn(total, hkv, d, device=device, dtype=dtype, generator=g).requires_grad_()
    do = torch.randn(total, hq, d, device=device, dtype=dtype, generator=g)
    fns = providers(lengths, hq, hkv, d, causal, device)
    if only:
        fns = {name: fn for name, fn in fns.items() if name in only or name == "livecc"}
    reference = fns["livecc"](q, k, v).float()
    rows = []
    for provider, fn in fns.items():
        try:
            out = fn(q, k, v)
            err = ((out.float() - reference).norm() / reference.norm()).item()
            t_fwd = median_ms(lambda fn=fn: fn(q, k, v))
            t_all = median_ms(lambda fn=fn: torch.autograd.grad(fn(q, k, v), (q, k, v), do))
        except Exception as e:  # report, do not hide: a provider that fails on a shape says so
            rows.append({"shape": name, "provider": provider, "error": f"{type(e).__name__}: {e}"[:200]})
            continue
        t_bwd = t_all - t_fwd
        rows.append({
            "shape": name, "provider": provider, "fwd_ms": t_fwd, "bwd_ms": t_bwd, "fwd+bwd_ms": t_all,
            "fwd_tflops": flops(lengths, hq, d, causal, "fwd") / t_fwd / 1e9,
            "bwd_tflops": flops(lengths, hq, d, causal, "bwd") / t_bwd / 1e9,
            "fwd+bwd_tflops": flops(lengths, hq, d, causal, "fwd+bwd") / t_all / 1e9,
            "rel_err_vs_livecc": err,
        })
    base = next((r for r in rows if r["provider"] == "torch_varlen_fa2" and "fwd_ms" in r), None)
    ours = next(r for r in rows if r["provider"] == "livecc" and "fwd_ms" in r)
    if base is not None:
        for phase in ("fwd", "bwd", "fwd+bwd"):
            ours[f"{phase}_x_fa2"] = base[f"{phase}_ms"] / ours[f"{phase}_ms"]
    return rows


def run(argv=()) -> Sweep | None:
    parser = argparse.ArgumentParser(prog="livecc bench attention", description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", default=",".join(s[0] for s in SHAPES), help="of: "
                        + ", ".join(s[0] for s in SHAPES))
    parser.add_argument("--providers", default=None, help="the providers to time (default: every one that imports; "
                        "livecc is always timed)")
    args = parser.parse_args(list(argv))
    known = {s[0]: s for s in SHAPES}
    unknown = [n for n in args.shapes.split(",") if n not in known]
    if unknown:
        parser.error(f"unknown shapes {unknown}; choose from {list(known)}")
    if not on_gpu():
        print("attention needs a GPU (the Triton kernels run only in the interpreter on CPU)")
        return None
    only = args.providers.split(",") if args.providers else None
    rows = []
    for name in args.shapes.split(","):
        rows += run_shape(*known[name], only=only)
        torch.cuda.empty_cache()
    notes = ("bf16. LLM packs: Qwen2-7B heads 28/4, d128, causal. ViT: 16 heads, d80 (Qwen2-VL) or d72 (vit3: "
             "Qwen3-VL), non-causal frame groups. "
             "livecc: the one-pass backward (dQ by atomic adds); livecc_deterministic: dQ in a pass of its own. "
             "*_x_fa2: PyTorch FlashAttention-2 varlen time / livecc time (>1 means livecc is faster).")
    cols = ["shape", "provider", "fwd_tflops", "bwd_tflops", "fwd+bwd_tflops", "fwd_x_fa2", "bwd_x_fa2",
            "fwd+bwd_x_fa2", "rel_err_vs_livecc", "error"]
    ours = {r["shape"]: r for r in rows if r["provider"] == "livecc" and "fwd_tflops" in r}
    headline = [{"target": f"P{1 if name.startswith('llm') else 2} {name}",
                 "figure": f"fwd {r['fwd_tflops']:.0f} / bwd {r['bwd_tflops']:.0f} TFLOP/s"
                           + (f" ({r['fwd_x_fa2']:.2f}x / {r['bwd_x_fa2']:.2f}x FA2)" if "fwd_x_fa2" in r else "")}
                for name, r in ours.items()]
    for name in ours:  # the dispatcher against the best single backend, fwd+bwd
        timed = [r for r in rows if r["shape"] == name and "fwd+bwd_ms" in r and r["provider"] != "livecc_auto"]
        auto = next((r for r in rows if r["shape"] == name and r["provider"] == "livecc_auto" and "fwd+bwd_ms" in r),
                    None)
        if timed and auto:
            best = min(timed, key=lambda r: r["fwd+bwd_ms"])
            headline.append({"target": f"dispatcher {name}",
                             "figure": f"{auto['fwd+bwd_ms'] / best['fwd+bwd_ms']:.3f}x {best['provider']}"})
    return Sweep("attention", rows, cols, notes, Plot("shape", "fwd+bwd_tflops", "provider", "TFLOP/s, fwd+bwd"),
                 headline)
