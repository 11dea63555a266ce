"""The ids of Qwen2-VL's chat-format tokens, read from a tokenizer."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["TokenIds"]


@dataclass(frozen=True)
class TokenIds:
    """Ids of the chat-format tokens the sequence builder and the streaming engine look for."""

    im_start: int
    im_end: int
    assistant: int
    newline: int
    vision_start: int
    vision_end: int
    video_pad: int
    image_pad: int
    endoftext: int

    @classmethod
    def from_tokenizer(cls, tokenizer) -> TokenIds:
        im_start, assistant, newline, im_end = tokenizer("<|im_start|>assistant\n<|im_end|>").input_ids
        names = ["<|vision_start|>", "<|vision_end|>", "<|video_pad|>", "<|image_pad|>", "<|endoftext|>"]
        ids = tokenizer.convert_tokens_to_ids(names)
        if tokenizer.convert_ids_to_tokens(ids) != names:
            raise ValueError(f"tokenizer lacks Qwen2-VL's special tokens {names}")
        return cls(im_start, im_end, assistant, newline, *ids)
