"""Packed streaming training: pre-training and SFT on one GPU or many."""

from .config import TrainConfig, load_config
from .trainer import Trainer, train

__all__ = ["TrainConfig", "Trainer", "load_config", "train"]
