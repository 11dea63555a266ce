"""Training configuration: one typed dataclass, read from JSON or YAML, overridden by ``key=value``.

Every value is checked against its field's type and range when the config is built: a string
where a number belongs (``lr: "abc"``), ``bf16: yes``, a non-positive count or an unknown key is
an error naming the key and what it expects, before any model is loaded.
"""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["ConfigError", "TrainConfig", "describe_config", "load_config"]


class ConfigError(ValueError):
    """A config value of the wrong type or range, an unknown key, or an unreadable file."""


@dataclass
class TrainConfig:
    # model: a local Qwen2-VL / Qwen2.5-VL checkpoint directory, or "tiny" (random, built from `tiny`)
    model: str = "tiny"
    tiny: dict = field(default_factory=dict)  # tiny_qwen_vl() arguments when model == "tiny"
    data: list[str] = field(default_factory=list)  # Live-CC JSONL files (with seek lines or not)
    video_root: str | None = None
    allow_absolute_paths: bool = False  # records may name videos by absolute path
    frame_rule: str = "reference"  # 2 FPS sampling rule (livecc.data.video): "reference" or "clip-start"
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
    replicas: int = 1  # HSDP under torchrun: shard within world/replicas ranks, replicate across groups
    device: str | None = None  # "cuda", "cpu" or null: CUDA when available (a GPU process per rank under torchrun)
    bf16: bool = True  # on GPU; CPU runs in fp32
    freeze_vision: bool = True
    gradient_checkpointing: bool = True
    # "full": recompute each decoder layer in the backward; "selective": keep GEMM and attention
    # outputs, recompute the elementwise ops (more memory, less recompute)
    checkpoint_policy: str = "full"
    compile: bool = False  # torch.compile each decoder layer (regional); the first steps pay the compile time
    fused_ops: bool = True  # on GPU: the fused rotary kernel, and Liger's RMSNorm / SwiGLU when installed
    with_context: bool = False
    # the stream's window plan (frames of the first window and of every later one, at 2 FPS) and
    # per-frame pixel bounds: recorded in the model's config, so streaming uses what training did
    initial_frames: int = 6
    frames_per_window: int = 2
    min_pixels: int = 100 * 28 * 28  # per frame
    max_pixels: int = 768 * 28 * 28
    seed: int = 0
    num_workers: int = 0  # processes decoding and building samples
    decode_device: str = "cpu"  # "cuda": decode with NVDEC and preprocess with the Triton kernel, in threads
    decode_threads: int = 4  # threads building samples when decode_device is "cuda"
    prefetch_packs: int = 2  # packs kept ready ahead of the step
    log_every: int = 1
    wandb_project: str | None = None  # log to Weights & Biases (needs wandb installed)
    save_every: int = 0  # steps; 0 saves only at the end
    stop_after: int | None = None  # end the run after this many steps (the schedule still spans max_steps)
    allow_failures: bool = False  # records that fail to build are skipped either way; this keeps the exit code 0

    def __post_init__(self):
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            setattr(self, f.name, _checked(f.name, getattr(self, f.name), hints[f.name]))
        _check_ranges(self)


_POSITIVE = ("epochs", "global_batch_clips", "token_budget", "log_every", "min_pixels", "max_pixels",
             "prefetch_packs", "replicas", "decode_threads", "initial_frames", "frames_per_window")
_POSITIVE_OR_NONE = ("max_steps", "stop_after")
_NON_NEGATIVE = ("weight_decay", "num_workers", "save_every")
_CHOICES = {"engine": ("livecc", "hf"), "checkpoint_policy": ("full", "selective"),
            "frame_rule": ("reference", "clip-start"), "device": (None, "cuda", "cpu"),
            "decode_device": ("cpu", "cuda")}


def _check_ranges(cfg: TrainConfig) -> None:
    def fail(key: str, expected: str) -> None:
        raise ConfigError(f"config key {key!r}: expected {expected}, got {getattr(cfg, key)!r}")

    for key in _POSITIVE:
        if getattr(cfg, key) <= 0:
            fail(key, "a positive number")
    for key in _POSITIVE_OR_NONE:
        if getattr(cfg, key) is not None and getattr(cfg, key) <= 0:
            fail(key, "a positive integer or null")
    for key in _NON_NEGATIVE:
        if getattr(cfg, key) < 0:
            fail(key, "a number >= 0")
    for key, choices in _CHOICES.items():
        if getattr(cfg, key) not in choices:
            fail(key, " or ".join(map(repr, choices)))
    if not cfg.lr > 0:
        fail("lr", "a positive learning rate")
    if not cfg.grad_clip > 0:
        fail("grad_clip", "a positive gradient-norm limit")
    if not 0 <= cfg.warmup_ratio <= 1:
        fail("warmup_ratio", "a fraction in [0, 1]")
    if not all(0 <= b < 1 for b in cfg.betas):
        fail("betas", "two numbers in [0, 1)")
    if cfg.max_pixels < cfg.min_pixels:
        fail("max_pixels", f"at least min_pixels ({cfg.min_pixels})")


def _type_name(hint) -> str:
    plain = typing.get_origin(hint) is None and isinstance(hint, type)
    return hint.__name__ if plain else str(hint).replace("typing.", "")


def _checked(key: str, value, hint):
    """``value`` as ``hint`` requires (ints are accepted as floats, lists as tuples), else ConfigError."""
    def fail():
        raise ConfigError(f"config key {key!r}: expected {_type_name(hint)}, got {value!r}")

    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _checked(key, value, inner)
    if hint is bool:
        return value if isinstance(value, bool) else fail()
    if hint is int:
        return value if isinstance(value, int) and not isinstance(value, bool) else fail()
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            fail()
        return float(value)
    if hint is str:
        return value if isinstance(value, str) else fail()
    if hint is dict:
        return value if isinstance(value, dict) else fail()
    if origin is list:
        if not isinstance(value, list):
            fail()
        return [_checked(f"{key}[{i}]", v, args[0]) for i, v in enumerate(value)]
    if origin is tuple:
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            fail()
        return tuple(_checked(f"{key}[{i}]", v, a) for i, (v, a) in enumerate(zip(value, args)))
    raise TypeError(f"config key {key!r}: no check for type {hint}")


def _parse_value(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _read(path: str | Path) -> dict:
    try:
        text = Path(path).read_text()
    except OSError as e:
        raise ConfigError(f"{path}: cannot read the config ({e.strerror or e})") from e
    try:
        if str(path).endswith((".yaml", ".yml")):
            import yaml

            values = yaml.safe_load(text)
        else:
            values = json.loads(text)
    except Exception as e:  # yaml.YAMLError or json.JSONDecodeError: both name the line
        raise ConfigError(f"{path}: broken config file ({e})") from e
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: a config is a mapping of keys to values, got {type(values).__name__}")
    return values


# Keys holding paths: in a config file they are relative to the file's folder, so a config works
# from any working directory; on the command line, to the working directory, as typed.
_PATH_KEYS = ("data", "video_root", "output_dir", "model")


def load_config(path: str | Path | None = None, overrides: list[str] = ()) -> TrainConfig:
    """A config from a JSON/YAML file (or defaults) with ``key=value`` overrides (values in JSON)."""
    values = _read(path) if path is not None else {}
    if path is not None:
        values = _relative_to(values, Path(path).resolve().parent)
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"override {item!r} is not key=value")
        values[key.strip()] = _parse_value(value)
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ConfigError(f"unknown config keys: {unknown} (known: {', '.join(sorted(names))})")
    return TrainConfig(**values)


def _relative_to(values: dict, folder: Path) -> dict:
    def place(value):
        if not isinstance(value, str) or value == "tiny" or Path(value).is_absolute():
            return value
        return str(folder / value)

    return {k: ([place(x) for x in v] if isinstance(v, list) else place(v)) if k in _PATH_KEYS else v
            for k, v in values.items()}


def describe_config() -> str:
    """Every key with its type and default, for ``livecc train --help``."""
    hints = typing.get_type_hints(TrainConfig)
    lines = []
    for f in dataclasses.fields(TrainConfig):
        default = f.default_factory() if f.default is dataclasses.MISSING else f.default
        lines.append(f"  {f.name} ({_type_name(hints[f.name])}) = {json.dumps(default)}")
    return "\n".join(lines)
