"""Thin glue between livecc's kernels and Hugging Face's Qwen2-VL classes, all in one place."""

from .loading import load_model
from .qwen2vl import TextOnlyHead, text_only_causal_lm_loss, use_livecc_attention

__all__ = ["TextOnlyHead", "load_model", "text_only_causal_lm_loss", "use_livecc_attention"]
