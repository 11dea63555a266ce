"""GPU telemetry during a benchmark run, sampled through NVML (``nvidia-ml-py``)."""

from __future__ import annotations

import threading
import time

__all__ = ["GpuTelemetry"]


class GpuTelemetry:
    """Samples power, SM clock, utilization and memory of GPU 0 every ``interval`` seconds."""

    def __init__(self, interval: float = 0.2):
        self.interval, self.samples, self.error = interval, [], None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            import pynvml

            pynvml.nvmlInit()
            handle = pynvml.nvmlDeviceGetHandleByIndex(0)
            while not self._stop.is_set():
                self.samples.append({
                    "power_w": pynvml.nvmlDeviceGetPowerUsage(handle) / 1000,
                    "sm_clock_mhz": pynvml.nvmlDeviceGetClockInfo(handle, pynvml.NVML_CLOCK_SM),
                    "util_pct": pynvml.nvmlDeviceGetUtilizationRates(handle).gpu,
                    "memory_gb": pynvml.nvmlDeviceGetMemoryInfo(handle).used / 2**30,
                })
                time.sleep(self.interval)
        except Exception as e:  # no NVML here: say so in the results instead of failing the run
            self.error = f"{type(e).__name__}: {e}"

    def __enter__(self) -> GpuTelemetry:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def summary(self) -> dict:
        if not self.samples:
            return {"error": self.error or "no samples"}
        peak = lambda k: max(s[k] for s in self.samples)
        mean = lambda k: sum(s[k] for s in self.samples) / len(self.samples)
        return {"samples": len(self.samples), "peak_power_w": peak("power_w"), "mean_power_w": mean("power_w"),
                "max_sm_clock_mhz": peak("sm_clock_mhz"), "mean_util_pct": mean("util_pct"),
                "peak_memory_gb": peak("memory_gb")}
