"""P3: text-only fused linear cross-entropy, forward + backward, against Liger, CCE and torch.

A LiveCC pack: N positions of which ~5% are text rows with a target; Qwen2-7B head (H=3584,
V=152064), bf16. FLOPs (``docs/performance.md``): 6*R*H*V for our kernel (R = text rows); baselines that run all
rows do 6*N*H*V. The floor is cuBLAS's time for the text rows' three GEMMs.

    livecc bench cross_entropy            # GPU: the 7B head; CPU: a small one, ratios only
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

from ..kernels import text_only_linear_cross_entropy
from .measure import median_ms, peak_extra_mb
from .results import Plot, Sweep, on_gpu


def make_inputs(n: int, h: int, v: int, text_frac: float, dtype, device, seed: int = 0):
    g = torch.Generator(device=device).manual_seed(seed)
    hidden = torch.randn(n, h, device=device, dtype=dtype, generator=g).requires_grad_()
    weight = (torch.randn(v, h, device=device, dtype=dtype, generator=g) / h**0.5).requires_grad_()
    labels = torch.full((n,), -100, device=device, dtype=torch.long)
    text = torch.rand(n, device=device, generator=g) < text_frac
    labels[text] = torch.randint(0, v, (int(text.sum()),), device=device, generator=g)
    return hidden, weight, labels


def providers(hidden, weight, labels) -> dict:
    """name -> function returning (loss, d_hidden, d_weight)."""
    keep = labels != -100

    def grads(loss):
        return (loss, *torch.autograd.grad(loss, (hidden, weight)))

    found = {
        "livecc": lambda: grads(text_only_linear_cross_entropy(hidden, weight, labels)),
        "torch_all_rows": lambda: grads(F.cross_entropy((hidden @ weight.T).float(), labels)),
        "torch_text_rows": lambda: grads(F.cross_entropy((hidden[keep] @ weight.T).float(), labels[keep])),
    }
    if hidden.is_cuda:
        try:
            from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss

            liger = LigerFusedLinearCrossEntropyLoss()
            found["liger_flce"] = lambda: grads(liger(weight, hidden, labels))
        except ImportError:
            pass
        try:
            from cut_cross_entropy import linear_cross_entropy

            found["cut_cross_entropy"] = lambda: grads(linear_cross_entropy(hidden, weight, labels))
        except ImportError:
            pass
    return found


def gemm_floor_ms(hidden, weight, labels) -> float:
    """cuBLAS (or CPU BLAS) time of the text rows' three GEMMs: logits, dh, dW."""
    with torch.no_grad():
        h = hidden[labels != -100].detach()
        w = weight.detach()
        logits = h @ w.T

        def three():
            torch.mm(h, w.T, out=logits)
            logits @ w
            logits.T @ h

        return median_ms(three)


def measure(n: int, h: int, v: int, text_frac: float, dtype) -> tuple[list[dict], dict]:
    device = "cuda" if on_gpu() else "cpu"
    hidden, weight, labels = make_inputs(n, h, v, text_frac, dtype, device)
    r = int((labels != -100).sum())
    fns = providers(hidden, weight, labels)
    reference = [t.float() for t in fns["torch_text_rows"]()]
    floor = gemm_floor_ms(hidden, weight, labels)
    grad_mb = (hidden.numel() + weight.numel()) * hidden.element_size() / 2**20
    rows = []
    for name, fn in fns.items():
        out = [t.float() for t in fn()]
        err = max(((a - b).norm() / b.norm()).item() for a, b in zip(out, reference))
        ms = median_ms(fn)
        rows_computed = r if name in ("livecc", "torch_text_rows") else n
        extra = peak_extra_mb(fn)
        rows.append({
            "provider": name, "ms": ms, "peak_extra_mb": extra,
            # beyond the two gradients every provider must return
            "working_mb": None if extra is None else extra - grad_mb,
            "tflops": 6 * rows_computed * h * v / ms / 1e9, "rel_err_vs_torch_text": err,
            "x_over_gemm_floor": ms / floor,
        })
    ours = next(x["ms"] for x in rows if x["provider"] == "livecc")
    for x in rows:
        x["speedup_of_livecc"] = x["ms"] / ours
    shape = {"n": n, "h": h, "v": v, "text_rows": r, "dtype": str(dtype), "gemm_floor_ms": floor}
    return rows, shape


def run(argv=()) -> Sweep:
    parser = argparse.ArgumentParser(prog="livecc bench cross_entropy", description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=16384 if on_gpu() else 1024)
    parser.add_argument("--hidden", type=int, default=3584 if on_gpu() else 256)
    parser.add_argument("--vocab", type=int, default=152064 if on_gpu() else 8192)
    parser.add_argument("--text-fracs", default="0.01,0.05,0.1,0.3,1", help="labelled fractions of the pack "
                        "(0.05 is the headline; 1: SFT's all-text packs)")
    parser.add_argument("--large-pack", action=argparse.BooleanOptionalAction, default=True,
                        help="on GPU also a 4x longer pack at 5%% text")
    args = parser.parse_args(list(argv))
    if 0.05 not in [float(f) for f in args.text_fracs.split(",")]:
        parser.error("--text-fracs must include 0.05, the headline's fraction")
    dtype = torch.bfloat16 if on_gpu() else torch.float32
    sweep = [(args.n, float(f)) for f in args.text_fracs.split(",")]
    if on_gpu() and args.large_pack:
        sweep.append((4 * args.n, 0.05))  # a 64k-row pack
    rows, headline_shape = [], None
    for n, frac in sweep:
        found, shape = measure(n, args.hidden, args.vocab, frac, dtype)
        for x in found:
            x.update(shape, pack=f"{n} rows, {frac:.0%} text")
        rows += found
        if (n, frac) == (args.n, 0.05):
            headline_shape = shape
        if on_gpu():
            torch.cuda.empty_cache()
    notes = (f"Packs of N positions with 1-30% labelled text rows, H={args.hidden}, V={args.vocab}, {dtype}; "
             "forward+backward. The floor is cuBLAS's time for the labelled rows' three GEMMs."
             + ("" if on_gpu() else " CPU run: ratios only; Triton kernels need a GPU here, so livecc "
                "takes its torch path on the text rows."))
    five = [x for x in rows if x["n"] == args.n and x["text_rows"] == headline_shape["text_rows"]]
    ours = next(x for x in five if x["provider"] == "livecc")
    speedups = ", ".join(f"{x['speedup_of_livecc']:.2f}x {x['provider']}" for x in five if x is not ours)
    headline = [{"target": "P3",
                 "figure": f"{ours['ms']:.3g} ms = {ours['x_over_gemm_floor']:.2f}x floor, "
                           f"{ours['working_mb'] or 0:.0f} MB beyond the gradients; faster than: {speedups}"}]
    cols = ["pack", "provider", "ms", "speedup_of_livecc", "x_over_gemm_floor", "tflops", "peak_extra_mb",
            "working_mb", "rel_err_vs_torch_text"]
    return Sweep("cross_entropy", rows, cols, notes, Plot("pack", "ms", "provider", "ms, fwd+bwd"), headline)
