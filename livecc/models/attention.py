"""``attn_implementation="livecc"``: our varlen attention behind Hugging Face's attention interface.

Sequences come, in order of preference, from ``cu_seq_lens_q/k`` keyword arguments (packed
training), from text position ids that restart at 0 (packing detected like FlashAttention-2 does),
from a 2D padding mask, or else each batch row is one sequence (with a KV cache, queries are the
last ``Lq`` positions: bottom-right causal).
"""

from __future__ import annotations

import sys
import types
import weakref

import torch
from transformers import AttentionInterface
from transformers.masking_utils import AttentionMaskInterface, flash_attention_mask
from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import Qwen2_5_VLVisionAttention
from transformers.models.qwen2_vl.modeling_qwen2_vl import VisionAttention
from transformers.models.qwen3_vl.modeling_qwen3_vl import Qwen3VLVisionAttention
from transformers.models.qwen3_vl_moe.modeling_qwen3_vl_moe import Qwen3VLMoeVisionAttention

from ..kernels import cu_seqlens, varlen_attention
from .vision import use_host_vision

__all__ = ["ATTN_IMPLEMENTATION", "cu_seqlens_from_position_ids", "livecc_attention_forward", "register",
           "use_livecc_attention", "use_livecc_vision_attention"]

ATTN_IMPLEMENTATION = "livecc"
# The ViT attention of every family (Qwen3-VL-MoE's ViT is Qwen3-VL's, in a class of its own)
VISION_ATTENTION = (VisionAttention, Qwen2_5_VLVisionAttention, Qwen3VLVisionAttention, Qwen3VLMoeVisionAttention)


def cu_seqlens_from_position_ids(position_ids: torch.Tensor) -> torch.Tensor:
    """Document offsets of a packed row whose positions restart at 0 for every document."""
    flat = position_ids.flatten()
    starts = (flat == 0).nonzero().flatten()
    if starts.numel() == 0 or starts[0] != 0:
        starts = torch.cat([starts.new_zeros(1), starts])
    return torch.cat([starts, starts.new_tensor([flat.numel()])]).to(torch.int32)


def _lengths_max(cu: torch.Tensor) -> int:
    return int((cu[1:] - cu[:-1]).max()) if cu.numel() > 1 else 0


_seen_offsets: dict[int, tuple[weakref.ref, int]] = {}


def _max_length_of(cu: torch.Tensor) -> int:
    """The longest document of offsets ``cu``, read from the device once per offsets tensor: every
    block of a ViT forward gets the same ``cu_seqlens`` object, so its 32 blocks cost one host read,
    not 32."""
    seen = _seen_offsets.get(id(cu))
    if seen is not None and seen[0]() is cu:
        return seen[1]
    for key in [k for k, (ref, _) in _seen_offsets.items() if ref() is None]:
        del _seen_offsets[key]
    longest = _lengths_max(cu)
    _seen_offsets[id(cu)] = (weakref.ref(cu), longest)
    return longest


def livecc_attention_forward(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    is_causal: bool | None = None,
    cu_seq_lens_q: torch.Tensor | None = None,
    cu_seq_lens_k: torch.Tensor | None = None,
    max_length_q: int | None = None,
    max_length_k: int | None = None,
    position_ids: torch.Tensor | None = None,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """``query [B, Hq, Lq, D]``, ``key/value [B, Hkv, Lk, D]`` -> ``([B, Lq, Hq, D], None)``."""
    if dropout:
        raise NotImplementedError("livecc attention has no dropout")
    causal = getattr(module, "is_causal", True) if is_causal is None else is_causal
    b, hq, lq, d = query.shape
    lk = key.shape[2]
    q, k, v = (t.transpose(1, 2).reshape(-1, t.shape[1], d) for t in (query, key, value))  # [B*L, H, D]
    if cu_seq_lens_q is None and position_ids is not None and b == 1 and lq == lk and attention_mask is None:
        cu_seq_lens_q = cu_seq_lens_k = cu_seqlens_from_position_ids(position_ids)
    if cu_seq_lens_q is not None:
        cu_q, cu_k = cu_seq_lens_q, cu_seq_lens_q if cu_seq_lens_k is None else cu_seq_lens_k
        max_q = max_length_q or _lengths_max(cu_q)
        max_k = max_length_k or _lengths_max(cu_k)
    elif attention_mask is not None:
        return _padded(q, k, v, attention_mask, b, lq, lk, causal, scaling), None
    else:
        cu_q, cu_k = cu_seqlens([lq] * b, q.device), cu_seqlens([lk] * b, q.device)
        max_q, max_k = lq, lk
    out = varlen_attention(q, k, v, cu_q, cu_k, max_q, max_k, causal=causal, softmax_scale=scaling)
    return out.view(b, lq, hq, d), None


def _padded(q, k, v, mask, b, lq, lk, causal, scaling):
    """Unpad with a 2D ``[B, Lk]`` mask (queries are the last ``Lq`` positions), attend, re-pad."""
    if mask.ndim != 2:
        raise ValueError(f"livecc attention takes a 2D padding mask, got shape {tuple(mask.shape)}")
    keep_k = mask.bool()
    keep_q = keep_k[:, lk - lq :]
    cu_q, cu_k = cu_seqlens(keep_q.sum(1), q.device), cu_seqlens(keep_k.sum(1), q.device)
    out = varlen_attention(q[keep_q.flatten()], k[keep_k.flatten()], v[keep_k.flatten()], cu_q, cu_k,
                              _lengths_max(cu_q), _lengths_max(cu_k), causal=causal, softmax_scale=scaling)
    full = out.new_zeros((b * lq, *out.shape[1:]))
    full[keep_q.flatten()] = out
    return full.view(b, lq, *out.shape[1:])


def register() -> None:
    """Make ``attn_implementation="livecc"`` known to transformers (idempotent; ``import livecc`` does it)."""
    AttentionInterface.register(ATTN_IMPLEMENTATION, livecc_attention_forward)
    # Like FlashAttention: no dense mask is built; padding arrives as the 2D mask, or None.
    AttentionMaskInterface.register(ATTN_IMPLEMENTATION, flash_attention_mask)


def _vision_attention_forward(self, hidden_states, cu_seqlens, position_embeddings=None, max_seqlen=None, **kwargs):
    """Qwen2-VL / Qwen2.5-VL / Qwen3-VL(-MoE) ViT attention over every frame group (or window) at once:
    one varlen call, not a loop per group."""
    apply_rotary_pos_emb_vision = sys.modules[type(self).__module__].apply_rotary_pos_emb_vision
    seq_len = hidden_states.shape[0]
    q, k, v = self.qkv(hidden_states).reshape(seq_len, 3, self.num_heads, -1).permute(1, 0, 2, 3).unbind(0)
    cos, sin = position_embeddings
    q, k = apply_rotary_pos_emb_vision(q, k, cos, sin)
    max_len = int(max_seqlen) if max_seqlen is not None else _max_length_of(cu_seqlens)
    cu = cu_seqlens.to(torch.int32)
    out = varlen_attention(q, k, v, cu, cu, max_len, max_len, causal=False, softmax_scale=self.scaling)
    return self.proj(out.reshape(seq_len, -1))


def use_livecc_attention(model) -> None:
    """Run a Qwen2-VL, Qwen2.5-VL or Qwen3-VL (dense or MoE) model's LLM and ViT attention on livecc's
    varlen kernel, and a packed row's ViT on geometry computed on the host."""
    register()
    model.set_attn_implementation(ATTN_IMPLEMENTATION)
    use_livecc_vision_attention(model)
    use_host_vision(model)


def use_livecc_vision_attention(model) -> None:
    """Run the model's ViT attention (only) on livecc's varlen kernel: one call over every frame,
    with nothing read back from the device when the longest length is given."""
    for module in model.modules():
        if isinstance(module, VISION_ATTENTION):
            module.forward = types.MethodType(_vision_attention_forward, module)
