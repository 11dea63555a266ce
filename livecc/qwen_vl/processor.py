"""A Qwen2-VL processor from a local directory, with or without torchvision.

Hugging Face's ``Qwen2VLProcessor`` needs torchvision for its video processor (transformers 5);
livecc patchifies frames itself, so a processor directory is usable without torchvision:
:func:`load_processor` falls back to :class:`Qwen2VLTextProcessor` (tokenizer + image settings).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

__all__ = ["QWEN2VL_CHAT_TEMPLATE", "QWEN3VL_CHAT_TEMPLATE", "Qwen2VLTextProcessor", "load_processor"]

log = logging.getLogger("livecc.qwen_vl")

# The chat template shipped with Qwen2-VL checkpoints: a default system turn opens every chat.
_DEFAULT_SYSTEM = ("{% if loop.first and message['role'] != 'system' %}"
                   "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}")
_TURNS = (
    "<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}"
    "{{ message['content'] }}<|im_end|>\n{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}"
    "Picture {{ image_count.value }}: {% endif %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}{% if add_vision_id %}"
    "Video {{ video_count.value }}: {% endif %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
_COUNTERS = "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
QWEN2VL_CHAT_TEMPLATE = _COUNTERS + "{% for message in messages %}" + _DEFAULT_SYSTEM + _TURNS
# Qwen3-VL's writes the turns the same way (text, images, videos) with no default system turn.
QWEN3VL_CHAT_TEMPLATE = _COUNTERS + "{% for message in messages %}" + _TURNS


class Qwen2VLTextProcessor:
    """A Qwen2-VL processor without torchvision: tokenizer, image-processor settings, chat template."""

    def __init__(self, tokenizer, image_processor, chat_template: str = QWEN2VL_CHAT_TEMPLATE):
        self.tokenizer = tokenizer
        self.image_processor = image_processor
        self.chat_template = chat_template
        if not getattr(tokenizer, "chat_template", None):
            tokenizer.chat_template = chat_template

    def apply_chat_template(self, conversation, **kwargs):
        return self.tokenizer.apply_chat_template(conversation, chat_template=self.chat_template, **kwargs)

    def save_pretrained(self, path: str | Path) -> None:
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        self.tokenizer.save_pretrained(path)
        self.image_processor.save_pretrained(path)
        (path / "chat_template.json").write_text(json.dumps({"chat_template": self.chat_template}, indent=2))

    @classmethod
    def from_pretrained(cls, path: str | Path) -> Qwen2VLTextProcessor:
        from transformers import AutoTokenizer
        from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

        path = Path(path)
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        image_processor = Qwen2VLImageProcessorPil.from_pretrained(path, local_files_only=True)
        template_file = path / "chat_template.json"
        template = (
            json.loads(template_file.read_text())["chat_template"]
            if template_file.is_file()
            else getattr(tokenizer, "chat_template", None) or QWEN2VL_CHAT_TEMPLATE
        )
        return cls(tokenizer, image_processor, template)


def load_processor(path: str | Path):
    """A Qwen2-VL processor from a local directory: Hugging Face's when it loads, else ours."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: processor directory not found")
    try:
        from transformers import AutoProcessor

        return AutoProcessor.from_pretrained(path, local_files_only=True)
    except (ImportError, AttributeError, ValueError, OSError) as e:
        log.info("Hugging Face processor unavailable for %s (%s); using Qwen2VLTextProcessor", path, e)
        return Qwen2VLTextProcessor.from_pretrained(path)
