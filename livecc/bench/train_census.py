"""P5's accounting: a training step of the 7B and 2B shapes op by op, on meta tensors (any
machine, seconds).

For each shape and activation-checkpointing policy, the frozen ViT's forward over a 16k pack's
frames and the LLM's forward and backward over the pack (the hidden states' gradient given: the LM
head and loss are the cross-entropy benchmark's), then the fused AdamW step over the LLM's weights
(its bytes by construction: the fused kernel does not run on meta tensors), run on the meta device
through the GPU code path: livecc's kernels by their fake implementations, the ViT's grid-derived
tensors computed on the host as the streaming engine does. Liger's fused norms and SwiGLU do not
run on meta tensors, so the elementwise ops are the unfused ones: what fusion has to remove. A
dispatch mode counts each op's calls, the bytes it reads and writes (each tensor once per call)
and, for matrix products, its FLOPs from the shapes; the backward's count includes what
checkpointing recomputes. Time at the ceilings of the newest GPU result in ``bench/results``
(matrix products and attention at the bf16 GEMM rate, attention by the documents' lengths with the
flash backward's 2.5x, other ops' bytes at the copy rate) gives each op's floor, and the step's.

    livecc bench train_census
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import importlib
import json
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from ..train.flops import FlopAccount
from ..train.metrics import PEAK_BF16_FLOPS
from .results import Sweep

SHAPES = ("qwen2vl-7b", "qwen2vl-2b")
POLICIES = (None, "selective", "full")
_aten = torch.ops.aten
_PRODUCTS = {_aten.mm.default, _aten.addmm.default, _aten.bmm.default}  # and convolutions
_FREE = {_aten._unsafe_view.default, _aten.detach.default, _aten.alias.default, _aten.lift_fresh.default}


class OpCensus(TorchDispatchMode):
    """Calls, bytes read + written and matrix-product FLOPs per (phase, op)."""

    def __init__(self):
        super().__init__()
        self.phase = "forward"
        self.calls: collections.Counter = collections.Counter()
        self.bytes: collections.Counter = collections.Counter()
        self.flops: collections.Counter = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func.is_view or func in _FREE:
            return out
        key = (self.phase, str(func.overloadpacket).removeprefix("aten."))
        tensors = [t for t in tree_flatten((args, kwargs or {}, out))[0] if isinstance(t, torch.Tensor)]
        self.calls[key] += 1
        self.bytes[key] += sum(t.numel() * t.element_size() for t in tensors)
        if func in _PRODUCTS:
            a, b = args[-2], args[-1]
            self.flops[key] += 2 * a.shape[-2] * a.shape[-1] * b.shape[-1] * (a.shape[0] if a.ndim == 3 else 1)
        elif func is _aten.convolution.default:  # each output element: a product over the kernel's window
            self.flops[key] += 2 * out.numel() * args[1][0].numel()
        return out


@contextlib.contextmanager
def kernels_on_meta():
    """livecc's kernels serve meta tensors (their fake implementations), as they serve a GPU's."""
    dispatch = importlib.import_module("livecc.kernels.dispatch")
    users = [importlib.import_module(f"livecc.kernels.{name}") for name in ("varlen_attention.backends", "rotary")]
    original = dispatch.use_triton
    for module in users:
        module.use_triton = lambda t: t.device.type == "meta" or original(t)
    try:
        yield
    finally:
        for module in users:
            module.use_triton = original


def step_census(shape: str, policy: str | None, clips: list) -> tuple[OpCensus, FlopAccount]:
    from ..models import patch, use_livecc_vision_attention
    from ..models.vision import run_vision, vision_geometry
    from ..train.parallelize import apply_activation_checkpointing
    from .measure import random_qwen2vl

    model = random_qwen2vl(shape, "sdpa", device="meta").train()
    model.model.visual.requires_grad_(False)
    if policy:
        apply_activation_checkpointing(model, policy)
    patch(model, loss=False, fused_ops=False)
    use_livecc_vision_attention(model)
    grids = [g for c in clips for g in c[3].tolist()]
    lengths = [c[0].numel() for c in clips]
    cu = torch.tensor([0] + lengths, dtype=torch.int32).cumsum(0, dtype=torch.int32).to("meta")
    hidden = model.config.text_config.hidden_size
    geometry = vision_geometry(model.model.visual, grids, "meta")  # on the host, once per frame size
    census = OpCensus()
    with kernels_on_meta(), census:
        pixels = torch.empty(sum(t * h * w for t, h, w in grids), clips[0][4].shape[1], device="meta",
                             dtype=torch.bfloat16)
        census.phase = "vit forward"
        with torch.no_grad():
            run_vision(model.model.visual, pixels, geometry)
        census.phase = "forward"
        embeds = torch.empty(1, sum(lengths), hidden, device="meta", dtype=torch.bfloat16, requires_grad=True)
        positions = torch.empty(3, 1, sum(lengths), device="meta", dtype=torch.long)
        out = model.model.language_model(inputs_embeds=embeds, position_ids=positions, cu_seq_lens_q=cu,
                                         cu_seq_lens_k=cu, max_length_q=max(lengths), max_length_k=max(lengths),
                                         use_cache=False).last_hidden_state
        census.phase = "backward"
        out.backward(torch.empty_like(out))
    # The trainer's fused AdamW, one pass over the trained weights (moments in their dtype): each
    # parameter, gradient and moment read, the parameter and moments written.
    trained = [p for p in model.parameters() if p.requires_grad]
    census.calls["optimizer", "fused AdamW"] = 1
    census.bytes["optimizer", "fused AdamW"] = 7 * sum(p.numel() * p.element_size() for p in trained)
    return census, FlopAccount(model, policy)


def newest_ceilings(results: Path) -> dict | None:
    """The newest GPU run's measured ceilings: ``{"copy": TB/s, "gemm": TFLOP/s, "peak": the
    datasheet's FLOP/s, "device": ...}``."""
    for path in sorted(results.glob("*-ceilings.json"), reverse=True):
        data = json.loads(path.read_text())
        values = {r["ceiling"].split()[0]: r["value"] for r in data["results"]}
        if "copy" in values and "bf16" in values:
            device = data["environment"]["device"]
            peak = next((v for k, v in PEAK_BF16_FLOPS.items() if k in device), PEAK_BF16_FLOPS["H100"])
            return {"copy": values["copy"], "gemm": values["bf16"], "peak": peak, "device": device,
                    "file": path.name}
    return None


def _accounted(shape: str, policy: str | None, clips: list, lengths: list[int], label_rows: int, grids: list,
               ceilings: dict | None) -> tuple[list[dict], dict]:
    """One step's rows per (phase, op), with their floors at ``ceilings``, and its summary row."""
    census, account = step_census(shape, policy, clips)
    flops = account(lengths, label_rows, grids)
    per_call = {"vit forward": account.vision_attention_forward(grids)}  # an attention call's forward
    per_call["forward"] = per_call["backward"] = account.attention_forward(lengths)
    floor_ms = collections.Counter({"matrix product": flops.head / 1e12 / ceilings["gemm"] * 1e3 if ceilings else 0})
    named = {"shape": shape, "checkpointing": policy or "none"}
    rows, tflop_total = [], 0.0
    for (phase, op), calls in sorted(census.calls.items(), key=lambda kv: -census.bytes[kv[0]]):
        key = (phase, op)
        tflop = census.flops[key] / 1e12
        if op.startswith("livecc.varlen_attention"):  # a flash backward: 2.5 x the forward
            tflop = calls * per_call[phase] * (2.5 if op.endswith("bwd") else 1.0) / 1e12
        kind = "matrix product" if tflop else "other"
        ms = None
        if ceilings:
            ms = tflop / ceilings["gemm"] * 1e3 if tflop else census.bytes[key] / 1e9 / ceilings["copy"]
            floor_ms[kind] += ms
        tflop_total += tflop
        rows.append({**named, "phase": phase, "op": op, "kind": kind, "calls": calls,
                     "gb": census.bytes[key] / 1e9, "tflop": tflop, "floor_ms": ms})
    step_ms = sum(floor_ms.values()) if ceilings else None
    step = {**named, "phase": "step", "op": "all", "kind": "summary", "calls": sum(census.calls.values()),
            "gb": sum(census.bytes.values()) / 1e9, "tflop": tflop_total, "floor_ms": step_ms,
            "products_ms": floor_ms["matrix product"] if ceilings else None,
            "other_ms": floor_ms["other"] if ceilings else None, "model_tflop": flops.model / 1e12,
            "hardware_tflop": flops.hardware / 1e12, "head_tflop": flops.head / 1e12,
            "mfu_at_floor": flops.model / (step_ms / 1e3) / ceilings["peak"] if step_ms else None}
    return rows, step


def run(argv=()) -> Sweep:
    from .train import fill

    parser = argparse.ArgumentParser(prog="livecc bench train_census", description=__doc__.splitlines()[0])
    parser.add_argument("--pack", type=int, default=16384, help="pack tokens (clips filled in)")
    parser.add_argument("--seconds", type=int, default=20, help="seconds of video a clip")
    parser.add_argument("--results", default="bench/results", help="where the GPU ceilings are read from")
    args = parser.parse_args(list(argv))
    ceilings = newest_ceilings(Path(args.results))
    clips = fill(args.pack, args.seconds, torch.Generator().manual_seed(0))
    lengths, grids = [c[0].numel() for c in clips], [g for c in clips for g in c[3].tolist()]
    label_rows = sum(int((c[1][1:] != -100).sum()) for c in clips)
    rows, summary = [], []
    for shape in SHAPES:
        for policy in POLICIES:
            ops, step = _accounted(shape, policy, clips, lengths, label_rows, grids, ceilings)
            rows += ops
            summary.append(step)
    where = (f"ceilings of {ceilings['device']} ({ceilings['file']}: copy {ceilings['copy']:.2f} TB/s, bf16 GEMM "
             f"{ceilings['gemm']:.0f} TFLOP/s)" if ceilings else "no GPU ceilings found: bytes and FLOPs only")
    notes = (f"A {sum(lengths)}-token pack of {len(clips)} clips of {args.seconds} s ({label_rows} labelled rows), "
             f"bf16, frozen ViT, meta tensors; {where}. The LM head and loss (head_tflop) are not in the op "
             "rows; MFU at the floor counts them in the model FLOPs against the device's datasheet peak.")
    headline = [{"target": f"P5 census {r['shape']} {r['checkpointing']}",
                 "figure": f"model {r['model_tflop']:.0f} TFLOP (hardware {r['hardware_tflop']:.0f}); "
                           + (f"floor {r['floor_ms']:.0f} ms ({r['products_ms']:.0f} products, {r['other_ms']:.0f} "
                              f"other ops' bytes): MFU at most {r['mfu_at_floor']:.0%}" if r["floor_ms"] else
                              f"{r['gb']:.0f} GB moved")}
                for r in summary]
    cols = ["shape", "checkpointing", "phase", "op", "kind", "calls", "gb", "tflop", "floor_ms", "products_ms",
            "other_ms", "model_tflop", "hardware_tflop", "mfu_at_floor"]
    return Sweep("train_census", summary + rows, cols, notes, None, headline)
