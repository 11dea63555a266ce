"""What the benchmarks measure with: timing, memory, the model shapes of ``docs/performance.md``."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch

from ..train.metrics import PEAK_BF16_FLOPS, peak_flops
from .results import on_gpu

__all__ = ["HBM", "PEAK", "SHAPES", "median_ms", "peak_extra_mb", "random_qwen2vl", "reference_attention"]

SHAPES = {  # hidden, layers, q heads, kv heads, MLP, vocab
    "qwen2vl-2b": (1536, 28, 12, 2, 8960, 151936),
    "qwen2vl-7b": (3584, 28, 28, 4, 18944, 152064),
}
PEAK = peak_flops() or PEAK_BF16_FLOPS["H100"]  # dense bf16 FLOP/s of this GPU (an H100 off GPU)
PEAK_HBM = {"H100": 3.35e12, "H200": 4.8e12, "A100": 2.0e12}  # SXM HBM bytes/s, datasheet
HBM = next((v for k, v in PEAK_HBM.items() if on_gpu() and k in torch.cuda.get_device_name()), PEAK_HBM["H100"])


def qwen2vl_config(shape: str, attn: str = "sdpa"):
    """The config of a Qwen2-VL of ``shape`` with the real ViT."""
    from transformers import Qwen2VLConfig

    h, n, hq, hkv, mlp, vocab = SHAPES[shape]
    cfg = Qwen2VLConfig(
        text_config=dict(vocab_size=vocab, hidden_size=h, intermediate_size=mlp, num_hidden_layers=n,
                         num_attention_heads=hq, num_key_value_heads=hkv,
                         rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": [16, 24, 24]}),
        vision_config=dict(depth=32, embed_dim=1280, num_heads=16, hidden_size=h))
    cfg._attn_implementation = attn
    return cfg


def random_qwen2vl(shape: str, attn: str, device: str = "cuda"):
    """A Qwen2-VL of ``shape`` (the real ViT) with random bf16 weights, built on ``device`` (the
    GPU; ``meta`` for its shapes alone)."""
    from transformers import Qwen2VLForConditionalGeneration

    with torch.device(device):
        return Qwen2VLForConditionalGeneration(qwen2vl_config(shape, attn)).to(torch.bfloat16)


def reference_attention() -> str:
    """The reference stack's attention: FlashAttention-2 when installed, else SDPA."""
    try:
        import flash_attn  # noqa: F401
    except ImportError:
        return "sdpa"
    return "flash_attention_2"


def median_ms(fn: Callable[[], object], warmup: int = 3, rep: int = 10) -> float:
    """Median wall time of ``fn``: ``triton.testing.do_bench`` on GPU, perf_counter on CPU."""
    if on_gpu():
        from triton.testing import do_bench

        return float(do_bench(fn, warmup=25, rep=100, return_mode="median"))
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(rep):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def peak_extra_mb(fn: Callable[[], object]) -> float | None:
    """Peak memory ``fn`` allocates beyond what was live before it (GPU only)."""
    if not on_gpu():
        return None
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2**20
