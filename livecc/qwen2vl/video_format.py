"""How a model family writes a window's frames into its LLM sequence.

Qwen2-VL and Qwen2.5-VL write a window as one block ``<|vision_start|>`` pads ``<|vision_end|>``,
its frame pairs stacked on the temporal position axis (Qwen2.5-VL spaces them ``time_interval``
apart). Qwen3-VL writes each frame pair (temporal patch) as a block of its own, announced by its
time in text, ``<1.2 seconds>``: the mean time of the pair's frames, as its processor computes
them; its M-RoPE then places every block at one temporal position, as ``get_rope_index`` splits
each video grid into grids of one temporal patch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .rope import rope_time_interval
from .turns import VIDEO_BLOCK

__all__ = ["TIMESTAMPED_FAMILIES", "VideoFormat"]

TIMESTAMPED_FAMILIES = ("qwen3_vl",)  # model types whose frames carry text timestamps


@dataclass(frozen=True)
class VideoFormat:
    time_interval: float = 1.0  # temporal position step per frame pair (Qwen2.5-VL: 2 at 2 FPS)
    timestamps: bool = False  # Qwen3-VL: each frame pair its own block after its time
    fps: float = 2.0  # frames per second of the windows, for the timestamps
    temporal_patch_size: int = 2

    @classmethod
    def of(cls, config, temporal_patch_size: int = 2, fps: float = 2.0) -> VideoFormat:
        """The format of a model by its config (``model_type``, Qwen2.5-VL's ``tokens_per_second``)."""
        return cls(time_interval=rope_time_interval(config, temporal_patch_size, fps),
                   timestamps=getattr(config, "model_type", None) in TIMESTAMPED_FAMILIES, fps=fps,
                   temporal_patch_size=temporal_patch_size)

    def block(self, n_frames: int, start: float = 0.0) -> str:
        """The text of ``n_frames`` frames from ``start`` seconds, one pad per LLM block (expanded
        by :func:`~livecc.qwen2vl.turns.tokenize_with_video` to the tokens of :meth:`llm_grids`).
        A last pair short of a frame repeats its last frame, as the patchifier and Hugging Face's
        timestamps do."""
        if not self.timestamps:
            return VIDEO_BLOCK
        tp = self.temporal_patch_size
        times = [start + min(i, n_frames - 1) / self.fps for i in range(-(-n_frames // tp) * tp)]
        return "".join(f"<{(times[i] + times[i + tp - 1]) / 2:.1f} seconds>{VIDEO_BLOCK}"
                       for i in range(0, len(times), tp))

    def llm_grids(self, grids: torch.Tensor) -> torch.Tensor:
        """The ViT grids ``[n, 3]`` of the video blocks as the LLM places them: Qwen3-VL one grid of
        one temporal patch per frame pair, in order."""
        if not self.timestamps:
            return grids
        split = grids.repeat_interleave(grids[:, 0], dim=0)
        split[:, 0] = 1
        return split
