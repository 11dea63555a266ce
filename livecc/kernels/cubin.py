"""What a compiled Triton kernel holds: shared memory, registers and spills from its cubin (read
with the ``cuobjdump`` that Triton's wheel carries, so on any machine), and whether its products
are Hopper's ``wgmma`` and its loads the tensor copy engine's. The Hopper gate
(:mod:`livecc.kernels.aot`) reports them; the attention tuners drop tilings that spill."""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import tempfile
from pathlib import Path

from ..cache import cache_root

__all__ = ["resources", "spills"]

log = logging.getLogger(__name__)


def _tool(name: str) -> str:
    import triton

    return str(Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / name)


def resources(kernel, ptxas_log: str = "") -> dict:
    """Shared memory, registers and spills of a compiled kernel (from its cubin), and whether its
    matrix products are Hopper's ``wgmma`` and its loads the tensor copy engine's. The cubin's
    numbers are kept under the kernel's hash (Triton's cache key) in livecc's cache, so a kernel
    Triton's cache already holds costs no tool run the next time."""
    ptx = kernel.asm.get("ptx", "")
    out = {"shared": kernel.metadata.shared, "num_warps": kernel.metadata.num_warps,
           "num_stages": kernel.metadata.num_stages, "wgmma": "wgmma.mma_async" in ptx,
           "tma": "cp.async.bulk.tensor" in ptx,
           "wgmma_shapes": sorted(set(re.findall(r"wgmma\.mma_async\.sync\.aligned\.(m\d+n\d+k\d+)", ptx)),
                                  key=lambda s: [int(x) for x in re.findall(r"\d+", s)])}
    out.update(_cubin_resources(kernel))
    spill = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", ptxas_log)
    out["spill_bytes"] = int(spill.group(1)) + int(spill.group(2)) if spill else None
    out["spills"] = _in_local_memory(out) or bool(out["spill_bytes"])
    return out


def _cubin_resources(kernel) -> dict:
    """Registers, stack and local memory from ``cuobjdump``; the local loads and stores of the SASS
    are counted only where there is local memory (without it a kernel has none)."""
    cached = cache_root() / "aot" / f"{kernel.hash}.json"
    if cached.is_file():
        return json.loads(cached.read_text())
    with tempfile.TemporaryDirectory() as tmp:
        cubin = Path(tmp) / "k.cubin"
        cubin.write_bytes(kernel.asm["cubin"])
        usage = subprocess.run([_tool("cuobjdump"), "--dump-resource-usage", str(cubin)], capture_output=True,
                               text=True).stdout
        m = re.search(r"REG:(\d+) STACK:(\d+) SHARED:\d+ LOCAL:(\d+)", usage)
        out = {"registers": int(m.group(1)), "stack": int(m.group(2)), "local": int(m.group(3))} if m else {}
        sass = ""
        if not m or out["local"] or out["stack"]:
            sass = subprocess.run([_tool("cuobjdump"), "-sass", str(cubin)], capture_output=True, text=True).stdout
    out["spill_instructions"] = len(re.findall(r"\b(?:STL|LDL)(?:\.\w+)*\s", sass))
    if m:  # a cubin the tool could not read is read again next time
        cached.parent.mkdir(parents=True, exist_ok=True)
        partial = cached.with_suffix(f".{os.getpid()}.tmp")
        partial.write_text(json.dumps(out))
        partial.replace(cached)
    return out


def spills(kernel) -> bool:
    """Whether the compiled ``kernel`` keeps registers in local memory (False where the cubin cannot
    be read: a Triton without ``cuobjdump``, a cache that cannot be written)."""
    try:
        found = _cubin_resources(kernel)
    except OSError as e:
        log.warning("cannot read %s's registers (%s): its tilings are tuned whether they spill or not",
                    kernel.name, e)
        return False
    return _in_local_memory(found)


def _in_local_memory(found: dict) -> bool:
    return bool(found.get("local") or found["spill_instructions"])

