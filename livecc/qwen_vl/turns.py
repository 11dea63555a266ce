"""Qwen2-VL's chat format as LiveCC writes it: the turns, the streaming EOS, labels and video pads."""

from __future__ import annotations

import torch

from .tokens import TokenIds

__all__ = [
    "IGNORE_INDEX",
    "IMAGE_BLOCK",
    "STREAM_EOS",
    "SYSTEM_TURN",
    "VIDEO_BLOCK",
    "assistant_labels",
    "assistant_turn",
    "chat_text",
    "expand_pads",
    "user_turn",
]

STREAM_EOS = " ..."  # ends every assistant window: the streaming EOS, distinct from <|im_end|>
SYSTEM_TURN = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
VIDEO_BLOCK = "<|vision_start|><|video_pad|><|vision_end|>"
IMAGE_BLOCK = "<|vision_start|><|image_pad|><|vision_end|>"
IGNORE_INDEX = -100


def user_turn(start: float, end: float, query: str = "", video: str = VIDEO_BLOCK) -> str:
    """A streaming window's user turn: ``Time=start-end s``, its frames (``video``, the block
    :meth:`~livecc.qwen_vl.video_format.VideoFormat.block` writes), and the query (first turn)."""
    return f"<|im_start|>user\nTime={start:.1f}-{end:.1f}s{video}{query}<|im_end|>\n"


def assistant_turn(text: str) -> str:
    return f"<|im_start|>assistant\n{text}<|im_end|>\n"


def chat_text(processor, messages: list, add_generation_prompt: bool = False) -> str:
    """``messages`` (chat turns, their vision elements written as one pad each) as the processor's
    own chat template writes them: conversation samples and questions are written as the model's
    family writes them at inference (Qwen2-VL's template opens with a default system turn,
    Qwen3-VL's does not)."""
    owner = getattr(processor, "tokenizer", processor)
    if not (getattr(processor, "chat_template", None) or getattr(owner, "chat_template", None)):
        raise ValueError("the processor has no chat template to write conversations with")
    return processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)


def assistant_labels(input_ids: torch.Tensor, ids: TokenIds) -> torch.Tensor:
    """Labels equal to ``input_ids`` from after ``<|im_start|>assistant\\n`` through ``<|im_end|>``."""
    labels = torch.full_like(input_ids, IGNORE_INDEX)
    starts = (input_ids == ids.im_start).nonzero().flatten()
    ends = (input_ids == ids.im_end).nonzero().flatten()
    for s in starts.tolist():
        if s + 2 < input_ids.numel() and input_ids[s + 1] == ids.assistant and input_ids[s + 2] == ids.newline:
            after = ends[ends > s]
            e = int(after[0]) if after.numel() else input_ids.numel() - 1
            labels[s + 3 : e + 1] = input_ids[s + 3 : e + 1]
    return labels


def expand_pads(ids: torch.Tensor, pad: int, counts: list[int]) -> torch.Tensor:
    """Repeat the i-th ``pad`` (``<|video_pad|>`` or ``<|image_pad|>``) ``counts[i]`` times
    (tokenizing one pad per block is exact because it is a special token, and far faster than
    tokenizing thousands)."""
    repeats = torch.ones_like(ids)
    pad_positions = (ids == pad).nonzero().flatten()
    if pad_positions.numel() != len(counts):
        raise ValueError(f"{pad_positions.numel()} vision pads in text but {len(counts)} vision blocks")
    repeats[pad_positions] = torch.tensor(counts, dtype=ids.dtype)
    return torch.repeat_interleave(ids, repeats)
