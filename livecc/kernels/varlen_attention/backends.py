"""The attention implementations a CUDA call may take, and the dispatcher that picks among them.

``triton`` is livecc's kernel; ``sdpa_cudnn`` and ``sdpa_flash`` are PyTorch's SDPA with one backend
forced (a batched call when every document has the same length, else one call per document);
``torch_varlen`` is PyTorch's FlashAttention-2 varlen op and ``flash_attn`` the flash-attn package,
where they import. The others serve only queries aligned with their keys (training packs and the
ViT), not a window appended to a cache.

``backend="auto"`` times each candidate once per shape class (causality, head dim, dtype, heads,
pack and document length buckets) on the first call of that class, keeps the fastest whose output
agrees with the Triton kernel's, logs the choice with every timing, and caches it on disk per device
(``$LIVECC_CACHE``, default ``~/.cache/livecc``), so a process never probes a class twice.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

__all__ = ["BACKENDS", "Dispatcher", "available_backends", "shape_class"]

log = logging.getLogger("livecc.attention")


def _sdpa_backend(kind: str):
    from torch.nn.attention import SDPBackend, sdpa_kernel

    backend = {"cudnn": SDPBackend.CUDNN_ATTENTION, "flash": SDPBackend.FLASH_ATTENTION}[kind]

    def attend(q, k, v, cu_q, cu_k, max_q, max_k, causal, scale):
        lengths = (cu_q[1:] - cu_q[:-1]).tolist()
        with sdpa_kernel(backend):
            if len(set(lengths)) == 1:  # equal documents (ViT frame groups, uniform packs): one batched call
                b, length = len(lengths), lengths[0]
                qb, kb, vb = (t.view(b, length, t.shape[1], t.shape[2]).transpose(1, 2) for t in (q, k, v))
                out = F.scaled_dot_product_attention(qb, kb, vb, is_causal=causal, scale=scale,
                                                     enable_gqa=q.shape[1] != k.shape[1])
                return out.transpose(1, 2).reshape(q.shape)
            outs, start = [], 0
            for length in lengths:
                doc = slice(start, start + length)
                outs.append(F.scaled_dot_product_attention(
                    q[doc].transpose(0, 1)[None], k[doc].transpose(0, 1)[None], v[doc].transpose(0, 1)[None],
                    is_causal=causal, scale=scale, enable_gqa=q.shape[1] != k.shape[1])[0].transpose(0, 1))
                start += length
            return torch.cat(outs)

    return attend


def _torch_varlen(q, k, v, cu_q, cu_k, max_q, max_k, causal, scale):
    from torch.nn.attention.varlen import varlen_attn

    return varlen_attn(q, k, v, cu_q, cu_k, max_q, max_k, scale=scale, window_size=(-1, 0) if causal else (-1, -1),
                       enable_gqa=q.shape[1] != k.shape[1])


def _flash_attn(q, k, v, cu_q, cu_k, max_q, max_k, causal, scale):
    from flash_attn import flash_attn_varlen_func

    return flash_attn_varlen_func(q, k, v, cu_q, cu_k, max_q, max_k, softmax_scale=scale, causal=causal)


BACKENDS: dict[str, Callable | None] = {  # name -> implementation (triton is the op itself)
    "triton": None,
    "sdpa_cudnn": _sdpa_backend("cudnn"),
    "sdpa_flash": _sdpa_backend("flash"),
    "torch_varlen": _torch_varlen,
    "flash_attn": _flash_attn,
}


def available_backends(aligned: bool) -> list[str]:
    """Backends that can serve a call here (``aligned``: every document's queries are its keys)."""
    names = ["triton"]
    if aligned:
        names += ["sdpa_cudnn", "sdpa_flash"]
        if importlib.util.find_spec("torch.nn.attention.varlen") is not None:
            names.append("torch_varlen")
        if importlib.util.find_spec("flash_attn") is not None:
            names.append("flash_attn")
    return names


def _bucket(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


def shape_class(q, k, max_q: int, causal: bool) -> str:
    """The key a choice is cached under: what decides which implementation is fastest."""
    return (f"{'causal' if causal else 'full'}-d{q.shape[2]}-{str(q.dtype).removeprefix('torch.')}-h{q.shape[1]}"
            f"x{k.shape[1]}-pack{_bucket(q.shape[0])}-doc{_bucket(max_q)}")


class Dispatcher:
    """Which backend serves each shape class on one device: probed once, remembered on disk."""

    def __init__(self, device_name: str, cache_dir: str | os.PathLike | None = None):
        root = Path(cache_dir or os.environ.get("LIVECC_CACHE") or Path.home() / ".cache" / "livecc")
        slug = "".join(c if c.isalnum() else "-" for c in device_name.lower())
        self.path = root / f"attention-{slug}.json"
        self.choices: dict[str, dict] = json.loads(self.path.read_text()) if self.path.is_file() else {}

    def choose(self, key: str, candidates: dict[str, Callable[[], torch.Tensor]], reference: str = "triton",
               timer: Callable[[Callable[[], object]], float] | None = None) -> str:
        """The fastest of ``candidates`` (name -> a fwd+bwd run returning the output) whose output
        agrees with ``reference``'s; probed on the first call of ``key`` only."""
        if key in self.choices and self.choices[key]["backend"] in candidates:
            return self.choices[key]["backend"]
        timer = timer or _median_ms
        expected = candidates[reference]().float()
        timings, errors = {}, {}
        for name, run in candidates.items():
            try:
                out = run().float()
                err = ((out - expected).norm() / expected.norm().clamp(min=1e-12)).item()
                if err > 2e-2:  # a backend that disagrees is never chosen
                    errors[name] = f"relative error {err:.2g}"
                    continue
                timings[name] = timer(run)
            except Exception as e:  # a backend that cannot serve this class says why, and sits out
                errors[name] = f"{type(e).__name__}: {str(e)[:120]}"
        best = min(timings, key=timings.get)
        self.choices[key] = {"backend": best, "ms": {k: round(v, 4) for k, v in timings.items()}, "errors": errors}
        log.warning("attention %s: %s (%s)", key, best,
                    ", ".join(f"{k} {v:.3g} ms" for k, v in sorted(timings.items(), key=lambda kv: kv[1])))
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(self.choices, indent=1))
        os.replace(tmp, self.path)
        return best


def _median_ms(fn: Callable[[], object], repeat: int = 5) -> float:
    """Median milliseconds of ``fn`` after one warm-up: CUDA events on GPU, wall time elsewhere."""
    import statistics
    import time

    fn()
    times = []
    for _ in range(repeat):
        if torch.cuda.is_available():
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)
