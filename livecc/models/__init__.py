"""Thin glue between livecc's kernels and Hugging Face's Qwen2-VL classes, all in one place."""

from .attention import register, use_livecc_attention
from .loading import load_model
from .loss import TextOnlyHead, text_only_causal_lm_loss
from .patch import patch
from .tiny import tiny_qwen2vl

__all__ = ["TextOnlyHead", "load_model", "patch", "register", "text_only_causal_lm_loss", "tiny_qwen2vl",
           "use_livecc_attention"]
