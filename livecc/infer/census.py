"""What a streaming window asks of the host: kernels launched outside captured graphs and reads of
the device, counted per phase, on any machine.

On a GPU the host runs ahead of the device only while it launches work and never waits for a
result; every launch costs it microseconds and every read (``.item()``, ``.tolist()``, ``nonzero``,
a copy to the host) drains the queue. A :class:`Census` counts both through the GPU code path on
a CPU too: it follows which tensors would live on the device (the model's weights and buffers, the
KV pool, whatever is moved or made on the engine's device, and everything computed from them), so a
host tensor's bookkeeping is not mistaken for a device read (a tensor made with ``device=`` counts
as the device's when livecc makes it). Work a CUDA graph replays (run
eagerly from the same static buffers where nothing is captured) counts as captured, and each
replay as one launch; a kernel's torch reference (where Triton does not run) counts as the one
launch of the kernel it stands for. Phases are the engine's own (its phase clock's marks).

On the CPU a copy of a device tensor to the host by ``.to("cpu")`` is indistinguishable from a
no-op and is not counted; ``.cpu()``, ``.tolist()``, ``.numpy()``, ``.item()``, ``int()``,
``bool()``, ``copy_`` into a host tensor and the ops whose output size depends on the data are.
"""

from __future__ import annotations

import collections
import contextlib
import os
import sys
import weakref

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from ..kernels import dispatch

__all__ = ["PHASES", "Census", "captured", "mark", "read", "replayed", "window"]

# The window's phases in the order its clock marks them; "end" is the reading of the clock itself.
PHASES = ("preprocess", "vision", "prefill", "decode", "evict", "end")

_aten = torch.ops.aten
# Ops whose output size depends on the data: the host waits for the device to know it.
_SIZED_BY_DATA = {_aten.nonzero.default, _aten.masked_select.default, _aten.unique_consecutive.default,
                  _aten._unique2.default, _aten.unique_dim.default, _aten.repeat_interleave.Tensor}
_READS = {_aten._local_scalar_dense.default, _aten.equal.default}
_FACTORIES = ("zeros", "ones", "empty", "full", "arange", "tensor", "as_tensor", "rand", "randn", "randint")

_active: Census | None = None


class Census(TorchDispatchMode):
    """``with Census(model) as c:`` (then the engine made and stepped) -> ``c.windows``: per window,
    per phase, the launches outside captured graphs (``launches``: a replay is one), the reads of
    the device (``reads``), the copies to it (``uploads``) and the ops captured (``captured``).
    The model's weights and buffers and ``tensors`` are the device's from the start; what livecc
    makes on the device counts from when the census begins, so begin it before the engine. Other
    work than a window (a training step) names its own ``phases`` and calls :func:`window` and
    :func:`mark` itself."""

    def __init__(self, model, *tensors: torch.Tensor, phases: tuple[str, ...] = PHASES):
        super().__init__()
        self.phases = phases
        self.device = next(model.parameters()).device
        self._device_tensors: dict[int, weakref.ref] = {}
        for t in (*model.parameters(), *model.buffers(), *tensors):
            self._mark(t)
        self.windows: list[dict[str, collections.Counter]] = []  # per window, per phase
        self.sites: collections.Counter = collections.Counter()  # (phase, what, where in livecc) -> count
        self._phase = 0
        self._depth = 0  # inside a captured region
        self._kernel = False  # inside a kernel's torch reference: one launch, nothing inside counted
        self._patches: list[tuple[object, str, object]] = []

    # ------------------------------------------------------------------ which tensors are on the device

    def _mark(self, t) -> None:
        if isinstance(t, torch.Tensor):
            self._device_tensors[id(t)] = weakref.ref(t)

    def on_device(self, t) -> bool:
        if not isinstance(t, torch.Tensor):
            return False
        if self.device.type != "cpu":  # the device is its own: no tensor needs following
            return t.device.type == self.device.type
        ref = self._device_tensors.get(id(t))
        return ref is not None and ref() is t

    def _is_device(self, where) -> bool:
        where = torch.device(where)
        return where.type == self.device.type and where.index in (None, self.device.index)

    # ------------------------------------------------------------------ phases

    def _count(self, what: str) -> None:
        if self.windows and not self._kernel:  # nothing before the first window (loading, warm-up) is counted
            phase = self.phases[min(self._phase, len(self.phases) - 1)]
            self.windows[-1][phase][what] += 1
            if what != "captured":
                self.sites[phase, what, _caller()] += 1

    # ------------------------------------------------------------------ counting

    @contextlib.contextmanager
    def kernel(self):
        """A kernel's torch reference runs (``livecc.kernels.dispatch.reference``): one launch."""
        if self._kernel:
            yield
            return
        self._count("captured" if self._depth else "launches")
        self._kernel = True
        try:
            yield
        finally:
            self._kernel = False

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        inputs = [t for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)]
        # an op told where to put its output (``zeros_like(x, device="cpu")``) puts it there: on the host
        # unless livecc made it on the device (marked at the factory)
        device = "device" not in kwargs and any(self.on_device(t) for t in inputs)
        if func in _READS and device or func in _SIZED_BY_DATA and device:
            self._count("reads")
        elif func is _aten.index.Tensor and device and any(
                t is not None and t.dtype == torch.bool for t in args[1]):
            self._count("reads")  # a boolean mask indexes through nonzero
        elif func in (_aten.copy_.default, _aten._copy_from.default) and self.on_device(args[1]) \
                and not self.on_device(args[0]):
            self._count("reads")  # into a host tensor
        elif device and not func.is_view:
            self._count("captured" if self._depth else "launches")
        if device:
            for t in tree_flatten(out)[0]:
                self._mark(t)
        return out

    def _read(self, name: str):
        original = getattr(torch.Tensor, name)
        census = self

        def counted(t, *args, **kwargs):
            if census.on_device(t):
                census._count("reads")
            return original(t, *args, **kwargs)

        return counted

    def _moved(self):
        original = torch.Tensor.to
        census = self

        def to(t, *args, **kwargs):
            out = original(t, *args, **kwargs)
            target = next((a for a in (*args, kwargs.get("device")) if isinstance(a, (str, torch.device))), None)
            if target is not None and census._is_device(target) and not census.on_device(t):
                out = out.clone() if out is t else out  # a copy to the device: a tensor of its own
                census._mark(out)
                census._count("uploads")
            return out

        return to

    def _factory(self, name: str):
        original = getattr(torch, name)
        census = self

        def made(*args, **kwargs):
            out = original(*args, **kwargs)
            # made on the device by livecc (elsewhere ``device=`` names a host tensor's device as often)
            if kwargs.get("device") is not None and census._is_device(kwargs["device"]) \
                    and sys._getframe(1).f_code.co_filename.startswith(_PACKAGE):
                census._mark(out)
            return out

        return made

    def __enter__(self):
        global _active
        if _active is not None:
            raise RuntimeError("one census at a time")
        _active = dispatch.observer = self
        for name in ("tolist", "cpu", "numpy"):
            self._patch(torch.Tensor, name, self._read(name))
        self._patch(torch.Tensor, "to", self._moved())
        for name in _FACTORIES:
            self._patch(torch, name, self._factory(name))
        return super().__enter__()

    def _patch(self, owner, name: str, new) -> None:
        self._patches.append((owner, name, getattr(owner, name)))
        setattr(owner, name, new)

    def __exit__(self, *exc):
        global _active
        _active = dispatch.observer = None
        for owner, name, old in reversed(self._patches):
            setattr(owner, name, old)
        self._patches.clear()
        return super().__exit__(*exc)

    # ------------------------------------------------------------------ summaries

    def totals(self, windows: slice = slice(None)) -> dict[str, dict[str, float]]:
        """Per phase, the mean per window of each count over ``windows`` (default: all)."""
        chosen = self.windows[windows]
        out = {}
        for phase in self.phases:
            keys = sorted({k for w in chosen for k in w[phase]})
            out[phase] = {k: sum(w[phase][k] for w in chosen) / max(len(chosen), 1) for k in keys}
        return out


_PACKAGE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _caller() -> str:
    """The innermost line of livecc outside this module that led here (else the innermost line)."""
    frame, first = sys._getframe(2), None
    while frame is not None:
        name = frame.f_code.co_filename
        if name.startswith(_PACKAGE) and name != __file__:
            return f"{os.path.relpath(name, os.path.dirname(_PACKAGE))}:{frame.f_lineno} ({frame.f_code.co_name})"
        first = first or f"{name}:{frame.f_lineno}"
        frame = frame.f_back
    return first or "?"


def window() -> None:
    """A window begins (the engine's phase clock starts): its first phase is counted from here."""
    if _active is not None:
        _active.windows.append(collections.defaultdict(collections.Counter))
        _active._phase = 0


def mark() -> None:
    """A phase of the window ends (the engine's phase clock marks it)."""
    if _active is not None:
        _active._phase += 1


@contextlib.contextmanager
def captured():
    """Work a CUDA graph holds (run eagerly here): counted as captured, not launched."""
    if _active is None:
        yield
        return
    _active._depth += 1
    try:
        yield
    finally:
        _active._depth -= 1


def read() -> None:
    """A wait for the device that no tensor shows (a CUDA event's synchronisation)."""
    if _active is not None:
        _active._count("reads")


def replayed() -> None:
    """One graph replay: one launch."""
    if _active is not None:
        _active._count("launches")
