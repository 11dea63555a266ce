"""The device's two ceilings, measured: device-to-device copy bandwidth (bytes read plus written)
and the bf16 matrix rate on random data. Every other figure is read against these rather than a
datasheet.

    livecc bench ceilings        # needs a GPU
"""

from __future__ import annotations

import argparse

import torch

from .measure import HBM, PEAK, median_ms
from .results import Sweep, on_gpu


def run(argv=()) -> Sweep | None:
    argparse.ArgumentParser(prog="livecc bench ceilings", description=__doc__.splitlines()[0]).parse_args(list(argv))
    if not on_gpu():
        print("ceilings needs a GPU")
        return None
    g = torch.Generator(device="cuda").manual_seed(0)
    src = torch.randint(0, 255, (2 << 30,), dtype=torch.uint8, device="cuda", generator=g)  # 2 GiB, >> L2
    dst = torch.empty_like(src)
    copy_ms = median_ms(lambda: dst.copy_(src))
    n = 8192
    a, b = (torch.randn(n, n, device="cuda", generator=g, dtype=torch.bfloat16) for _ in range(2))
    gemm_ms = median_ms(lambda: a @ b)
    copy_bps = 2 * src.numel() / copy_ms * 1e3
    gemm_flops = 2 * n**3 / gemm_ms * 1e3
    rows = [{"ceiling": "copy", "ms": copy_ms, "value": copy_bps / 1e12, "unit": "TB/s",
             "datasheet": HBM / 1e12, "of_datasheet": copy_bps / HBM},
            {"ceiling": "bf16 GEMM 8192^3", "ms": gemm_ms, "value": gemm_flops / 1e12, "unit": "TFLOP/s",
             "datasheet": PEAK / 1e12, "of_datasheet": gemm_flops / PEAK}]
    headline = [{"target": "ceilings",
                 "figure": f"copy {copy_bps / 1e12:.2f} TB/s, bf16 GEMM {gemm_flops / 1e12:.0f} TFLOP/s"}]
    return Sweep("ceilings", rows, ["ceiling", "ms", "value", "unit", "datasheet", "of_datasheet"],
                 "2 GiB device-to-device copy (read + written bytes); 8192^3 bf16 product of random matrices.",
                 None, headline)
