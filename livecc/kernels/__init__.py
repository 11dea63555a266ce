"""livecc's kernels, each beside its pure-torch reference.

Every op runs where its inputs are (:mod:`livecc.kernels.dispatch`): Triton on CUDA, the same
Triton in its interpreter on CPU under ``TRITON_INTERPRET=1`` (how the tests run them), and torch
on CPU otherwise. The ``*_reference`` functions are the oracles the kernels are tested against.
"""

from .dispatch import cu_seqlens, use_triton
from .paged_decode_attention import paged_decode_attention, paged_decode_attention_reference
from .preprocess_frames import PatchGeometry, preprocess_frames, preprocess_frames_reference, resize_frames
from .rerotate import rerotate_keys, rerotate_keys_reference, shift_angles
from .rotary import rotary_qk, rotary_qk_reference
from .text_only_linear_cross_entropy import text_only_linear_cross_entropy, text_only_linear_cross_entropy_reference
from .varlen_attention import varlen_attention, varlen_attention_paged, varlen_attention_reference

__all__ = [
    "PatchGeometry",
    "cu_seqlens",
    "paged_decode_attention",
    "paged_decode_attention_reference",
    "preprocess_frames",
    "preprocess_frames_reference",
    "rerotate_keys",
    "rerotate_keys_reference",
    "resize_frames",
    "rotary_qk",
    "rotary_qk_reference",
    "shift_angles",
    "text_only_linear_cross_entropy",
    "text_only_linear_cross_entropy_reference",
    "use_triton",
    "varlen_attention",
    "varlen_attention_paged",
    "varlen_attention_reference",
]
