"""Training configuration: one dataclass, read from JSON or YAML, overridden by ``key=value``."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["TrainConfig", "load_config"]


@dataclass
class TrainConfig:
    # model: a local Qwen2-VL / Qwen2.5-VL checkpoint directory, or "tiny" (random, built from `tiny`)
    model: str = "tiny"
    tiny: dict = field(default_factory=dict)  # tiny_qwen2vl() arguments when model == "tiny"
    data: list[str] = field(default_factory=list)  # Live-CC JSONL files (with seek lines or not)
    video_root: str | None = None
    output_dir: str = "runs/livecc"
    # "livecc": packed varlen attention + text-only cross-entropy. "hf": Hugging Face forward and
    # loss with SDPA, one clip per micro-batch (the reference stack, for comparisons).
    engine: str = "livecc"
    lr: float = 2e-5
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_ratio: float = 0.03
    epochs: int = 1
    max_steps: int | None = None
    global_batch_clips: int = 512  # clips per optimizer step, over all ranks
    token_budget: int = 32768  # tokens per pack (micro-batch)
    grad_clip: float = 1.0
    bf16: bool = True  # on GPU; CPU runs in fp32
    freeze_vision: bool = True
    gradient_checkpointing: bool = True
    liger: bool = True  # Liger's RMSNorm / SwiGLU / M-RoPE kernels (GPU)
    with_context: bool = False
    min_pixels: int = 100 * 28 * 28  # per frame (SPEC section 4)
    max_pixels: int = 768 * 28 * 28
    seed: int = 0
    num_workers: int = 0
    log_every: int = 1
    save_every: int = 0  # steps; 0 saves only at the end
    stop_after: int | None = None  # end the run after this many steps (the schedule still spans max_steps)

    def __post_init__(self):
        if self.engine not in ("livecc", "hf"):
            raise ValueError(f"engine must be 'livecc' or 'hf', got {self.engine!r}")
        self.betas = tuple(self.betas)


def _parse_value(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def load_config(path: str | Path | None = None, overrides: list[str] = ()) -> TrainConfig:
    """A config from a JSON/YAML file (or defaults) with ``key=value`` overrides (values in JSON)."""
    values: dict = {}
    if path is not None:
        text = Path(path).read_text()
        if str(path).endswith((".yaml", ".yml")):
            import yaml

            values = yaml.safe_load(text) or {}
        else:
            values = json.loads(text)
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"override {item!r} is not key=value")
        values[key.strip()] = _parse_value(value)
    unknown = set(values) - names
    if unknown:
        raise ValueError(f"unknown config keys: {sorted(unknown)}")
    return TrainConfig(**values)
