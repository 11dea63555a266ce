"""What a training run reports: the peak table MFU is computed against (shared with the
benchmarks), each step's throughput, and where the metrics go (JSONL, the console, TensorBoard
when installed, Weights & Biases when installed and asked for)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import torch

__all__ = ["PEAK_BF16_FLOPS", "MetricsLog", "peak_flops", "step_throughput"]

PEAK_BF16_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12}  # dense bf16, datasheet


def peak_flops(device: torch.device | str | None = None) -> float | None:
    """Dense bf16 FLOP/s of ``device`` (the current CUDA device by default); None for a CPU or an
    unknown GPU."""
    if not torch.cuda.is_available() or (device is not None and torch.device(device).type != "cuda"):
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_BF16_FLOPS.items() if k in name), None)


def step_throughput(tokens: int, seconds: float, model_flops: float, hardware_flops: float, device: torch.device,
                    world: int = 1) -> dict:
    """tokens/s, MFU and hardware FLOPs utilisation (:class:`~.flops.FlopAccount`'s model and
    hardware FLOPs against ``world`` GPUs of ``device``'s peak; None off a known GPU) and the peak
    memory of a step."""
    peak = peak_flops(device)
    cuda = torch.device(device).type == "cuda"
    return {"seconds": seconds, "tokens_per_s": tokens / seconds,
            "mfu": model_flops / seconds / (peak * world) if peak else None,
            "hfu": hardware_flops / seconds / (peak * world) if peak else None,
            "max_memory_gb": torch.cuda.max_memory_allocated(device) / 2**30 if cuda else None}


class MetricsLog:
    """Rank 0's metrics: one JSON line per step in ``out/metrics.jsonl``, a console line every
    ``log_every`` steps, TensorBoard scalars under ``out/tb`` and, with ``wandb_project``, a
    Weights & Biases run. Other ranks log nothing."""

    SCALARS = ("loss", "lr", "grad_norm", "tokens_per_s", "mfu", "hfu", "data_wait_s")

    def __init__(self, out: Path, rank: int, total_steps: int, log_every: int = 1, wandb_project: str | None = None,
                 config: dict | None = None):
        self.active, self.total_steps, self.log_every = rank == 0, total_steps, log_every
        self.file = self.tb = self.wandb = None
        if not self.active:
            return
        self.file = open(Path(out) / "metrics.jsonl", "a")
        if importlib.util.find_spec("tensorboard") is not None:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(Path(out) / "tb"))
        if wandb_project:
            if importlib.util.find_spec("wandb") is None:
                raise ValueError(f"config key 'wandb_project': {wandb_project!r}, but wandb is not installed")
            import wandb

            self.wandb = wandb.init(project=wandb_project, config=config, dir=str(out))

    def log(self, m: dict) -> None:
        if not self.active:
            return
        self.file.write(json.dumps(m) + "\n")
        self.file.flush()
        scalars = {k: m[k] for k in self.SCALARS if m.get(k) is not None}
        if self.tb:
            for k, v in scalars.items():
                self.tb.add_scalar(k, v, m["step"])
        if self.wandb:
            self.wandb.log(scalars, step=m["step"])
        if m["step"] % self.log_every == 0:
            mfu = f" mfu={m['mfu']:.1%}" if m["mfu"] is not None else ""
            mem = f" mem={m['max_memory_gb']:.1f}GB" if m["max_memory_gb"] is not None else ""
            fed = f" loader={m['loader_clips_per_s']:.2f}clips/s" if m["loader_clips_per_s"] else ""
            print(f"step {m['step']}/{self.total_steps} loss={m['loss']:.4f} lr={m['lr']:.2e} "
                  f"gnorm={m['grad_norm']:.3f} clips={m['clips']} tok/s={m['tokens_per_s']:.0f}{mfu}{mem}"
                  f"{fed} wait={m['data_wait_s']:.2f}s", flush=True)

    def close(self) -> None:
        for sink in (self.file, self.tb):
            if sink is not None:
                sink.close()
        if self.wandb is not None:
            self.wandb.finish()
