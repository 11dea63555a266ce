"""livecc's benchmarks: one registry of sweeps (shapes x providers) and one result writer.

    livecc bench [NAME ...] [--out bench/results]      (or python -m livecc.bench)

Each benchmark module has ``run(argv) -> Sweep | None`` (None: it does not fit this machine, and
says why); :func:`main` runs the selected ones, writes each sweep (JSON, Markdown, PNG, keyed by
device) and regenerates the results README.
"""

from .results import Plot, Sweep, environment, on_gpu, regenerate_readme, write_sweep
from .runner import BENCHMARKS, main

__all__ = ["BENCHMARKS", "Plot", "Sweep", "environment", "main", "on_gpu", "regenerate_readme", "write_sweep"]
