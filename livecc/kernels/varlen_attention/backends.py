"""The attention implementations a CUDA call may take, and the dispatcher that picks among them.

``triton`` is livecc's kernel; ``sdpa_cudnn`` and ``sdpa_flash`` are PyTorch's SDPA with one backend
forced (a batched call when every document has the same length, else one call per document);
``torch_varlen`` is PyTorch's FlashAttention-2 varlen op and ``flash_attn`` the flash-attn package,
where they import. The others serve only queries aligned with their keys (training packs and the
ViT), not a window appended to a cache.

``backend="auto"`` times each candidate once per shape class (causality, head dim, dtype, heads,
pack and document length buckets) on the first call of that class, keeps the fastest whose output
agrees with the Triton kernel's, logs the choice with every timing, and caches it on disk per device
(``$LIVECC_CACHE``, default ``~/.cache/livecc``), so a process never probes a class twice. The
probe runs its forward and backward passes in a thread of its own: the caller may be inside an
activation-checkpointed forward (whose saved-tensor hooks and dispatch modes are thread-local and
must not see the probe's autograd graph) or its recomputation.
"""

from __future__ import annotations

import functools
import importlib.util
import inspect
import json
import logging
import os
import threading
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from ...cache import cache_root, file_label
from ..dispatch import use_triton

__all__ = ["BACKENDS", "Dispatcher", "available_backends", "kernel_serves", "shape_class", "torch_varlen_call"]

log = logging.getLogger("livecc.attention")
_fp32_logged = False


def kernel_serves(q: torch.Tensor) -> bool:
    """Whether livecc's Triton kernel (compiled, or in the interpreter) serves attention on ``q``:
    not for fp32 on a GPU, which takes PyTorch's SDPA instead."""
    global _fp32_logged
    if not use_triton(q):
        return False
    if q.is_cuda and q.dtype == torch.float32:
        if not _fp32_logged:
            log.warning("fp32 attention on %s runs PyTorch's SDPA: livecc's kernel computes fp32 on CUDA cores "
                        "and spills registers; use bf16 or fp16 for its speed", torch.cuda.get_device_name(q.device))
            _fp32_logged = True
        return False
    return True


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


def torch_varlen_call(varlen_attn: Callable) -> Callable:
    """PyTorch's varlen op called as the other backends are, whatever its release's signature:
    causality as ``is_causal`` (2.10) or ``window_size`` (later), and GQA through ``enable_gqa``
    where it exists, else with the key heads repeated."""
    params = inspect.signature(varlen_attn).parameters

    def attend(q, k, v, cu_q, cu_k, max_q, max_k, causal, scale):
        kw = {"is_causal": causal} if "is_causal" in params else {"window_size": (-1, 0) if causal else (-1, -1)}
        if "scale" in params:
            kw["scale"] = scale
        elif scale != q.shape[-1] ** -0.5:
            raise ValueError("this torch's varlen_attn takes no softmax scale")
        if q.shape[1] != k.shape[1]:
            if "enable_gqa" in params:
                kw["enable_gqa"] = True
            else:
                group = q.shape[1] // k.shape[1]
                k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
        return varlen_attn(q, k, v, cu_q, cu_k, max_q, max_k, **kw)

    return attend


def _torch_varlen(q, k, v, cu_q, cu_k, max_q, max_k, causal, scale):
    from torch.nn.attention.varlen import varlen_attn

    return torch_varlen_call(varlen_attn)(q, k, v, cu_q, cu_k, max_q, max_k, causal, scale)


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


@functools.cache
def available_backends(aligned: bool) -> tuple[str, ...]:
    """Backends that can serve a call here (``aligned``: every document's queries are its keys).
    Asked once per process: a module search on every call cost ~0.1 ms a ViT block."""
    names = ["triton"]
    if aligned:
        names += ["sdpa_cudnn", "sdpa_flash"]
        if importlib.util.find_spec("torch.nn.attention.varlen") is not None:
            names.append("torch_varlen")
        if importlib.util.find_spec("flash_attn") is not None:
            names.append("flash_attn")
    return tuple(names)


def _bucket(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


def shape_class(q, k, max_q: int, causal: bool) -> str:
    """The key a choice is cached under: what decides which implementation is fastest."""
    return (f"{'causal' if causal else 'full'}-d{q.shape[2]}-{str(q.dtype).removeprefix('torch.')}-h{q.shape[1]}"
            f"x{k.shape[1]}-pack{_bucket(q.shape[0])}-doc{_bucket(max_q)}")


class Dispatcher:
    """Which backend serves each shape class on one device: probed once, remembered on disk."""

    def __init__(self, device_name: str, cache_dir: str | os.PathLike | None = None):
        root = Path(cache_dir) if cache_dir else cache_root()
        self.path = root / f"attention-{file_label(device_name)}.json"
        self.choices: dict[str, dict] = json.loads(self.path.read_text()) if self.path.is_file() else {}

    def choose(self, key: str, candidates: dict[str, Callable[[], torch.Tensor]], reference: str = "triton",
               timer: Callable[[Callable[[], object]], float] | None = None) -> str:
        """The fastest of ``candidates`` (name -> a fwd+bwd run returning the output) whose output
        agrees with ``reference``'s; probed on the first call of ``key`` only."""
        if key in self.choices and self.choices[key]["backend"] in candidates:
            return self.choices[key]["backend"]
        timings, errors = _in_own_thread(lambda: self._probe(candidates, reference, timer or _median_ms))
        if not timings:
            raise RuntimeError(f"attention {key}: no backend could serve it: {errors}")
        best = min(timings, key=timings.get)
        self.choices[key] = {"backend": best, "ms": {k: round(v, 4) for k, v in timings.items()}, "errors": errors}
        log.warning("attention %s: %s (%s)", key, best,
                    ", ".join(f"{k} {v:.3g} ms" for k, v in sorted(timings.items(), key=lambda kv: kv[1])))
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(self.choices, indent=1))
        os.replace(tmp, self.path)
        return best


    @staticmethod
    def _probe(candidates: dict, reference: str, timer: Callable) -> tuple[dict, dict]:
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
        return timings, errors


def _in_own_thread(fn: Callable):
    """``fn()`` on a fresh thread: no saved-tensor hooks, dispatch modes or grad mode of the caller
    (thread-local all), on the caller's CUDA device, after the caller's stream has produced the inputs."""
    device = torch.cuda.current_device() if torch.cuda.is_available() else None
    if device is not None:
        torch.cuda.current_stream().synchronize()
    result: list = []

    def target():
        try:
            if device is not None:
                torch.cuda.set_device(device)
            with torch.enable_grad():
                result.append(("ok", fn()))
        except BaseException as e:  # handed back to the caller's thread
            result.append(("error", e))

    thread = threading.Thread(target=target, name="livecc-attention-probe")
    thread.start()
    thread.join()
    kind, value = result[0]
    if kind == "error":
        raise value
    return value


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
