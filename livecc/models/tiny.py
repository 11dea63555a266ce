"""A randomly initialised tiny Qwen2-VL / Qwen2.5-VL / Qwen3-VL / Qwen3-VL-MoE with the real token ids, for CPU
runs and tests."""

from __future__ import annotations

import torch
from transformers import (
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2VLConfig,
    Qwen2VLForConditionalGeneration,
    Qwen3VLConfig,
    Qwen3VLForConditionalGeneration,
    Qwen3VLMoeConfig,
    Qwen3VLMoeForConditionalGeneration,
)

ARCHS = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl", "qwen3_vl_moe")

__all__ = ["ARCHS", "tiny_config", "tiny_qwen_vl"]


def tiny_config(
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    vision_depth: int = 2,
    vision_dim: int = 32,
    vision_heads: int = 2,
    vocab_size: int = 151936,
    attn_implementation: str = "sdpa",
    arch: str = "qwen2_vl",
    **text_overrides,
):
    """The config of a tiny Qwen2-VL (``arch="qwen2_5_vl"``: Qwen2.5-VL, with its windowed ViT
    and seconds-spaced temporal positions; ``arch="qwen3_vl"``: Qwen3-VL, with QK-norm, interleaved
    M-RoPE, 16-pixel patches, a learned ViT position grid and DeepStack features from the first
    two ViT blocks; ``arch="qwen3_vl_moe"``: the same with a mixture of four experts, two per token,
    in every decoder layer, its router's auxiliary loss on) with the real token ids, small enough
    for CPU tests."""
    head_dim = hidden_size // num_heads
    section = head_dim // 2  # mrope splits head_dim/2 rotary frequencies over (t, h, w)
    mrope_section = [section - 2 * (section // 3), section // 3, section // 3]
    text_config = dict(
        vocab_size=vocab_size, hidden_size=hidden_size, intermediate_size=hidden_size * 2,
        num_hidden_layers=num_layers, num_attention_heads=num_heads, num_key_value_heads=num_kv_heads,
        max_position_embeddings=32768, rope_parameters={"rope_type": "default", "rope_theta": 1e6,
                                                        "mrope_section": mrope_section},
        pad_token_id=151643, **text_overrides,
    )
    vision_config = dict(depth=vision_depth, num_heads=vision_heads, patch_size=14, spatial_merge_size=2,
                         temporal_patch_size=2)
    top = {}  # keys of the model's own config
    if arch in ("qwen3_vl", "qwen3_vl_moe"):  # its text config has no bos/eos; it ties embeddings at the top level
        text_config.update(head_dim=head_dim)
        text_config["rope_parameters"]["mrope_interleaved"] = True
        if "tie_word_embeddings" in text_config:
            top["tie_word_embeddings"] = text_config.pop("tie_word_embeddings")
        vision_config.update(hidden_size=vision_dim, intermediate_size=vision_dim * 2, out_hidden_size=hidden_size,
                             patch_size=16, num_position_embeddings=256,
                             deepstack_visual_indexes=list(range(min(2, vision_depth))))
        config_cls = Qwen3VLConfig
        if arch == "qwen3_vl_moe":
            text_config.update(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=hidden_size,
                               decoder_sparse_step=1, output_router_logits=True, router_aux_loss_coef=0.01)
            config_cls = Qwen3VLMoeConfig
    elif arch == "qwen2_vl":
        text_config.update(bos_token_id=151643, eos_token_id=151645)
        vision_config.update(embed_dim=vision_dim, hidden_size=hidden_size, mlp_ratio=2)
        config_cls = Qwen2VLConfig
    elif arch == "qwen2_5_vl":
        # 2x2-token attention windows, the last block global: both ViT attention kinds run.
        text_config.update(bos_token_id=151643, eos_token_id=151645)
        vision_config.update(hidden_size=vision_dim, intermediate_size=vision_dim * 2, out_hidden_size=hidden_size,
                             window_size=56, fullatt_block_indexes=[vision_depth - 1], tokens_per_second=2)
        config_cls = Qwen2_5_VLConfig
    else:
        raise ValueError(f"arch must be one of {', '.join(ARCHS)}, got {arch!r}")
    config = config_cls(text_config=text_config, vision_config=vision_config, **top)
    config._attn_implementation = attn_implementation
    return config


_MODELS = {"qwen2_vl": Qwen2VLForConditionalGeneration, "qwen2_5_vl": Qwen2_5_VLForConditionalGeneration,
           "qwen3_vl": Qwen3VLForConditionalGeneration, "qwen3_vl_moe": Qwen3VLMoeForConditionalGeneration}


def tiny_qwen_vl(seed: int | None = 0, **options):
    """A randomly initialised tiny Qwen-VL of :func:`tiny_config` ``(**options)`` (weights drawn
    after ``torch.manual_seed(seed)``, unless ``seed`` is None)."""
    config = tiny_config(**options)
    if seed is not None:
        torch.manual_seed(seed)
    return _MODELS[config.model_type](config).eval()
