"""The Qwen-VL format that every layer above speaks (Qwen2-VL, Qwen2.5-VL, Qwen3-VL): token ids and
the processor, the vision input (patch geometry, resize rule, pixel budget), how a family writes
frames into the sequence, M-RoPE positions and the chat turns."""

from .ask import video_prompt_logits
from .offline import QWEN2VL_SPECIAL_TOKENS, offline_processor
from .processor import QWEN2VL_CHAT_TEMPLATE, Qwen2VLTextProcessor, load_processor
from .rope import mrope_position_ids, rope_time_interval, vision_runs
from .tokens import TokenIds
from .turns import (
    IGNORE_INDEX,
    IMAGE_BLOCK,
    STREAM_EOS,
    SYSTEM_TURN,
    VIDEO_BLOCK,
    assistant_labels,
    assistant_turn,
    expand_pads,
    user_turn,
)
from .video_format import FAMILIES, VideoFormat
from .vision import FRAME_FACTOR, IMAGE_FACTOR, PixelBudget, VisionSpec, clip_frame_size, smart_resize

__all__ = [
    "FAMILIES",
    "FRAME_FACTOR",
    "IGNORE_INDEX",
    "IMAGE_BLOCK",
    "IMAGE_FACTOR",
    "QWEN2VL_CHAT_TEMPLATE",
    "QWEN2VL_SPECIAL_TOKENS",
    "STREAM_EOS",
    "SYSTEM_TURN",
    "VIDEO_BLOCK",
    "PixelBudget",
    "Qwen2VLTextProcessor",
    "TokenIds",
    "VideoFormat",
    "VisionSpec",
    "assistant_labels",
    "assistant_turn",
    "clip_frame_size",
    "expand_pads",
    "load_processor",
    "mrope_position_ids",
    "offline_processor",
    "rope_time_interval",
    "smart_resize",
    "user_turn",
    "video_prompt_logits",
    "vision_runs",
]
