"""Compiled Triton (not its interpreter) rejects a kernel that reads a module global other than a
module, another kernel or a ``tl.constexpr``; the interpreter runs it anyway, so check the sources."""

import importlib
import types

import pytest
import triton.language as tl
from triton.runtime.jit import KernelInterface

from livecc.kernels import triton_utils


@pytest.mark.parametrize("kernel", ["varlen_attention", "text_only_linear_cross_entropy", "preprocess_frames",
                                    "paged_decode_attention"])
def test_kernels_read_only_globals_that_compile(kernel):
    module = importlib.import_module(f"livecc.kernels.{kernel}.triton")
    jitted = {name: obj for name, obj in vars(module).items()
              if isinstance(obj, KernelInterface) and obj.fn.__module__ == module.__name__}
    assert jitted
    jitted.update((name, obj) for name, obj in vars(triton_utils).items() if isinstance(obj, KernelInterface))
    for name, fn in jitted.items():
        scope = fn.fn.__globals__
        bad = [n for n in fn.fn.__code__.co_names
               if n in scope and not isinstance(scope[n], (types.ModuleType, KernelInterface, tl.constexpr))]
        assert not bad, f"{name} reads non-constexpr globals {bad}"
