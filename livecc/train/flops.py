"""A training step's FLOPs as PERF.md accounts them: model FLOPs (what the step must compute: MFU)
and hardware FLOPs (what it does compute, recomputation included: HFU).

Model FLOPs: 6 x the LLM's matrix weights x tokens (no embedding table, no LM head; a mixture of
experts' expert weights at their routed share), 6 x H x V x the rows the loss computes (the
text-only head computes the labelled rows only), the LLM's attention forward and backward by the
documents' lengths (causal: half the square; the backward twice the forward), and the frozen ViT's
forward (its weights x the rows each module sees: the merger's after the 2x2 merge) with its
attention over each frame. Hardware FLOPs add what is computed again: the decoder layers' forward
under full activation checkpointing (up to the last product the backward needs: a dense MLP's
down projection is not run again; selective checkpointing keeps the GEMM and attention outputs,
so it recomputes no matrix product) and the scores a flash backward recomputes (half the
attention forward).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from torch import nn

__all__ = ["FlopAccount", "StepFlops"]


@dataclass(frozen=True)
class StepFlops:
    llm: float  # the decoder layers' matrix products, forward and backward
    head: float  # the LM head on the rows the loss computes, forward and backward
    attention: float  # the LLM's attention, forward and backward
    vision: float  # the frozen ViT's forward, attention included
    recomputed: float  # activation checkpointing's forward again, the flash backward's scores

    @property
    def model(self) -> float:
        return self.llm + self.head + self.attention + self.vision

    @property
    def hardware(self) -> float:
        return self.model + self.recomputed


def _matrix_weights(module: nn.Module, experts_share: float) -> float:
    """Weights that multiply each row once: linear layers' and routers', and expert banks' (3-D) at
    their routed share."""
    total = 0.0
    for sub in module.modules():
        if isinstance(sub, nn.Linear):
            total += sub.weight.numel()
        elif not isinstance(sub, nn.Embedding) and not list(sub.children()):
            own = list(sub.parameters(recurse=False))
            total += sum(p.numel() * (1.0 if p.ndim == 2 else experts_share) for p in own if p.ndim in (2, 3))
    return total


def _attention_forward(lengths: Sequence[int], heads: int, head_dim: int, causal: bool) -> float:
    return 4.0 * sum(s * s for s in lengths) * heads * head_dim * (0.5 if causal else 1.0)


class FlopAccount:
    """The FLOPs of a forward + backward of a Qwen2-VL / Qwen3-VL ``model`` trained with
    ``checkpointing`` None, "selective" or "full" and an attention whose backward recomputes the
    scores (``flash_backward``); the model's weights are read once (meta tensors serve). A trained
    ViT (``train_vision``) counts its backward too (twice its forward), not its recomputation."""

    def __init__(self, model, checkpointing: str | None = None, flash_backward: bool = True,
                 train_vision: bool = False):
        if checkpointing not in (None, "selective", "full"):
            raise ValueError(f"checkpointing must be None, 'selective' or 'full', got {checkpointing!r}")
        self.checkpointing, self.flash_backward, self.train_vision = checkpointing, flash_backward, train_vision
        text, vision, language = model.config.text_config, model.config.vision_config, model.model.language_model
        experts = getattr(text, "num_experts", 0) or 0
        self.llm_weights = _matrix_weights(language, text.num_experts_per_tok / experts if experts else 0.0)
        self.unneeded = sum(m.weight.numel() for n, m in language.named_modules()  # not run again under full AC
                            if n.endswith("mlp.down_proj") and isinstance(m, nn.Linear))
        self.layers, self.heads = text.num_hidden_layers, text.num_attention_heads
        self.head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
        self.head_weights = text.hidden_size * model.lm_head.out_features
        visual = model.model.visual
        self.merge = vision.spatial_merge_size**2
        self.vit_per_patch = self.vit_per_merged = 0.0  # weights applied to each patch / each merged row
        for name, child in visual.named_children():
            weights = _matrix_weights(child, 0.0)
            if name == "patch_embed":  # a convolution with stride = kernel: a matrix product per patch
                weights += sum(p.numel() for p in child.parameters() if p.ndim == 5)
            if "merger" in name:
                self.vit_per_merged += weights
            else:
                self.vit_per_patch += weights
        self.vit_blocks, self.vit_heads = len(visual.blocks), vision.num_heads
        self.vit_head_dim = (getattr(vision, "embed_dim", None) or vision.hidden_size) // vision.num_heads

    def attention_forward(self, doc_lengths: Sequence[int]) -> float:
        """One LLM layer's causal attention forward over the documents."""
        return _attention_forward(doc_lengths, self.heads, self.head_dim, True)

    def vision_attention_forward(self, grids: Sequence[Sequence[int]]) -> float:
        """One ViT block's attention forward, each frame attending within itself."""
        return _attention_forward([h * w for t, h, w in grids for _ in range(t)], self.vit_heads, self.vit_head_dim,
                                  False)

    def __call__(self, doc_lengths: Sequence[int], label_rows: int, grids: Sequence[Sequence[int]] = ()) -> StepFlops:
        """Documents of ``doc_lengths`` tokens, ``label_rows`` labelled, videos and images of
        ``grids`` (``(t, h, w)`` patches each; each frame attends within itself)."""
        tokens = sum(doc_lengths)
        attention_fwd = self.layers * self.attention_forward(doc_lengths)
        patches = sum(t * h * w for t, h, w in grids)
        vision = (2.0 * patches * self.vit_per_patch + 2.0 * (patches // self.merge) * self.vit_per_merged
                  + self.vit_blocks * self.vision_attention_forward(grids))
        recomputed = 0.5 * attention_fwd if self.flash_backward else 0.0
        if self.checkpointing == "full":
            recomputed += 2.0 * (self.llm_weights - self.unneeded) * tokens + attention_fwd
        return StepFlops(llm=6.0 * self.llm_weights * tokens, head=6.0 * self.head_weights * label_rows,
                         attention=3.0 * attention_fwd, vision=vision * (3.0 if self.train_vision else 1.0),
                         recomputed=recomputed)
