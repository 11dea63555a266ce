"""Thin glue between livecc's kernels and Hugging Face's Qwen2-VL, Qwen2.5-VL and Qwen3-VL classes, all in one place."""

from .attention import register, use_livecc_attention, use_livecc_vision_attention
from .loading import TINY_MODELS, load_model, model_config, placement
from .loss import TextOnlyHead, text_only_causal_lm_loss
from .patch import patch
from .tiny import ARCHS, tiny_qwen_vl

__all__ = ["ARCHS", "TINY_MODELS", "TextOnlyHead", "load_model", "model_config", "patch", "placement", "register",
           "text_only_causal_lm_loss", "tiny_qwen_vl", "use_livecc_attention", "use_livecc_vision_attention"]
