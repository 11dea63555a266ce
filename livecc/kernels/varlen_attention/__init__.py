"""Varlen attention for packed sequences: causal (the LLM, bottom-right) and not (the ViT).

``varlen_attention`` runs where its inputs are (``livecc.kernels.dispatch``): on CUDA the fastest
of livecc's Triton kernels and the attention PyTorch ships (``backends``: probed once per shape
class, cached per device), the Triton kernels in Triton's interpreter under ``TRITON_INTERPRET=1``,
PyTorch's SDPA per document on CPU. fp32 inputs on a GPU take PyTorch's SDPA too (logged once):
the kernel's fp32 products run on CUDA cores, not tensor cores, and spill registers on Hopper.
The Triton path is a pair of ``torch.library`` custom ops with fake implementations and an
autograd formula, so ``torch.compile`` and FSDP see through them.
``varlen_attention_reference`` is the oracle.
"""

from __future__ import annotations

import torch

from ..dispatch import check_devices
from .backends import BACKENDS, Dispatcher, available_backends, kernel_serves, shape_class
from .paged import varlen_attention_paged
from .reference import varlen_attention_reference
from .sdpa import varlen_attention_sdpa

__all__ = ["available_backends", "kernel_serves", "varlen_attention", "varlen_attention_paged",
           "varlen_attention_reference", "varlen_attention_sdpa"]

_dispatchers: dict[int, Dispatcher] = {}  # CUDA device index -> its dispatcher


@torch.library.custom_op("livecc::varlen_attention_fwd", mutates_args=())
def _fwd(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens_q: torch.Tensor, cu_seqlens_k: torch.Tensor,
         max_seqlen_q: int, max_seqlen_k: int, causal: bool, scale: float,
         deterministic: bool) -> tuple[torch.Tensor, torch.Tensor]:
    from .triton import varlen_attention_fwd

    return varlen_attention_fwd(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, causal, scale)


@_fwd.register_fake
def _(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, causal, scale, deterministic):
    return torch.empty_like(q), q.new_empty((q.shape[1], q.shape[0]), dtype=torch.float32)


@torch.library.custom_op("livecc::varlen_attention_bwd", mutates_args=())
def _bwd(do: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor,
         lse: torch.Tensor, cu_seqlens_q: torch.Tensor, cu_seqlens_k: torch.Tensor, max_seqlen_q: int,
         max_seqlen_k: int, causal: bool, scale: float,
         deterministic: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    from .triton import varlen_attention_bwd

    return varlen_attention_bwd(do, q, k, v, out, lse, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k,
                                causal, scale, deterministic)


@_bwd.register_fake
def _(do, q, k, v, out, lse, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, causal, scale, deterministic):
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)


def _setup_context(ctx, inputs, output):
    q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, causal, scale, deterministic = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, out, lse, cu_seqlens_q, cu_seqlens_k)
    ctx.config = (max_seqlen_q, max_seqlen_k, causal, scale, deterministic)


def _backward(ctx, grad_out, grad_lse):
    q, k, v, out, lse, cu_seqlens_q, cu_seqlens_k = ctx.saved_tensors
    dq, dk, dv = _bwd(grad_out, q, k, v, out, lse, cu_seqlens_q, cu_seqlens_k, *ctx.config)
    return dq, dk, dv, None, None, None, None, None, None, None


_fwd.register_autograd(_backward, setup_context=_setup_context)


def _dispatcher(index: int) -> Dispatcher:
    """The dispatcher of CUDA device ``index``, its choices on disk per device model (the device is
    named once, not on every call)."""
    if index not in _dispatchers:
        _dispatchers[index] = Dispatcher(torch.cuda.get_device_name(index))
    return _dispatchers[index]


def _auto(args: tuple, aligned: bool) -> str:
    """The backend the dispatcher picked for this call's shape class (probing it the first time)."""
    q, k = args[0], args[1]
    names = available_backends(aligned)
    if not q.is_cuda or len(names) == 1 or torch.compiler.is_compiling() or torch.cuda.is_current_stream_capturing():
        return "triton"  # nothing to choose, or no probing inside a traced or captured region
    if not (torch.is_grad_enabled() and any(t.requires_grad for t in args[:3])):
        # A forward alone (streaming, evaluation, a frozen ViT in training): the probe times forward
        # and backward, where the candidates differ most; livecc's forward reads nothing back from the
        # device (the SDPA backends read the lengths every call), so a CUDA graph can hold it, and it
        # ran level with cuDNN's on the ViT (342 / 343 TFLOP/s, H200, 2026-12-04).
        return "triton"
    dispatcher = _dispatcher(q.device.index or 0)

    def run(name):
        def fwd_bwd():
            q_, k_, v_ = (t.detach().requires_grad_() for t in args[:3])
            with torch.enable_grad():
                out = varlen_attention(q_, k_, v_, *args[3:7], causal=args[7], softmax_scale=args[8], backend=name)
                out.backward(torch.ones_like(out))
            return out.detach()

        return fwd_bwd

    return dispatcher.choose(shape_class(q, k, args[5], args[7]), {name: run(name) for name in names})


def _check(q, k, v, cu_seqlens_q, cu_seqlens_k) -> None:
    if q.ndim != 3 or k.ndim != 3 or v.shape != k.shape or q.shape[2] != k.shape[2]:
        raise ValueError(f"expected q [Tq, Hq, D], k/v [Tk, Hkv, D]; got {tuple(q.shape)}, {tuple(k.shape)}")
    if q.shape[1] % k.shape[1]:
        raise ValueError(f"query heads ({q.shape[1]}) must be a multiple of key heads ({k.shape[1]})")
    if cu_seqlens_q.numel() != cu_seqlens_k.numel():
        raise ValueError("cu_seqlens_q and cu_seqlens_k must describe the same number of sequences")
    check_devices("varlen_attention", q=q, k=k, v=v, cu_seqlens_q=cu_seqlens_q, cu_seqlens_k=cu_seqlens_k)


def varlen_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_seqlens_q: torch.Tensor,
    cu_seqlens_k: torch.Tensor,
    max_seqlen_q: int,
    max_seqlen_k: int,
    causal: bool = True,
    softmax_scale: float | None = None,
    return_lse: bool = False,
    backend: str = "auto",
    deterministic: bool | None = None,
):
    """Attention over packed sequences.

    ``q [Tq, Hq, D]``, ``k/v [Tk, Hkv, D]`` (Hq a multiple of Hkv; D 64, 80 or 128 and any other
    size), ``cu_seqlens_* [B + 1]`` int32 offsets from 0 to the total (as in FlashAttention, every
    row belongs to a sequence: checking would cost a host sync per call). Causal masks are aligned
    bottom-right, for queries appended after a KV cache. Returns ``out [Tq, Hq, D]`` (0 for a query
    that sees no key) and, with ``return_lse``, ``lse [Hq, Tq]`` in fp32 natural log (-inf there).
    ``backend`` (CUDA): ``"auto"`` or one of ``backends.BACKENDS``. The Triton backward adds dQ
    with atomic adds in one pass; ``deterministic`` (default: ``torch.are_deterministic_algorithms_enabled()``
    when the forward runs) computes dQ in a pass of its own instead, the same bits run to run, and
    makes ``"auto"`` the Triton kernels.
    """
    _check(q, k, v, cu_seqlens_q, cu_seqlens_k)
    scale = q.shape[-1] ** -0.5 if softmax_scale is None else float(softmax_scale)
    if kernel_serves(q):
        cu_q, cu_k = cu_seqlens_q.to(torch.int32), cu_seqlens_k.to(torch.int32)
        args = (q, k, v, cu_q, cu_k, int(max_seqlen_q), int(max_seqlen_k), bool(causal), scale)
        if deterministic is None:
            deterministic = torch.are_deterministic_algorithms_enabled()
        if backend == "auto":  # the other backends' backwards promise no fixed order of their dQ sums
            backend = "triton" if return_lse or deterministic else _auto(args, aligned=cu_seqlens_q is cu_seqlens_k)
        if backend not in BACKENDS:
            raise ValueError(f"unknown attention backend {backend!r}; choose from {sorted(BACKENDS)} or 'auto'")
        if backend != "triton":
            return BACKENDS[backend](*args)
        out, lse = _fwd(*args, bool(deterministic))
    elif return_lse:
        out, lse = varlen_attention_reference(q, k, v, cu_seqlens_q, cu_seqlens_k, causal, scale)
    else:
        return varlen_attention_sdpa(q, k, v, cu_seqlens_q, cu_seqlens_k, causal, scale)
    return (out, lse) if return_lse else out
