"""Packed streaming training: pre-training and SFT on one GPU or many."""

from .config import ConfigError, TrainConfig, load_config

__all__ = ["ConfigError", "TrainConfig", "Trainer", "load_config", "train"]


def __getattr__(name: str):
    # The trainer pulls in transformers and the kernels; the config alone (for `livecc train --help`) does not.
    if name in ("Trainer", "train"):
        from . import trainer

        return getattr(trainer, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
