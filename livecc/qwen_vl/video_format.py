"""How a model family writes a window's frames into its LLM sequence, and the sequence it makes.

Qwen2-VL and Qwen2.5-VL write a window as one block ``<|vision_start|>`` pads ``<|vision_end|>``,
its frame pairs stacked on the temporal position axis (Qwen2.5-VL spaces them ``time_interval``
apart). Qwen3-VL writes each frame pair (temporal patch) as a block of its own, announced by its
time in text, ``<1.2 seconds>``: the mean time of the pair's frames, as its processor computes
them; its M-RoPE then places every block at one temporal position, as ``get_rope_index`` splits
each video grid into grids of one temporal patch.

:class:`VideoFormat` owns the whole sequence from text and grids to ids and positions
(:meth:`~VideoFormat.sequence`), as Hugging Face's processor owns the ids and the model's
``get_rope_index`` the positions: every sample, prompt and question is made by it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .rope import mrope_position_ids, rope_time_interval
from .tokens import TokenIds
from .turns import VIDEO_BLOCK, expand_pads

__all__ = ["FAMILIES", "VideoFormat"]

# model_type -> whether its frames carry text timestamps (one block per frame pair)
FAMILIES = {"qwen2_vl": False, "qwen2_5_vl": False, "qwen3_vl": True, "qwen3_vl_moe": True}


@dataclass(frozen=True)
class VideoFormat:
    time_interval: float = 1.0  # temporal position step per frame pair (Qwen2.5-VL: 2 at 2 FPS)
    timestamps: bool = False  # Qwen3-VL: each frame pair its own block after its time
    fps: float = 2.0  # frames per second of the windows, for the timestamps
    temporal_patch_size: int = 2
    merge_size: int = 2  # ViT patches merged per side into one LLM token

    @classmethod
    def of(cls, config, temporal_patch_size: int = 2, fps: float = 2.0) -> VideoFormat:
        """The format of a model by its config (``model_type``, Qwen2.5-VL's ``tokens_per_second``);
        a ValueError for a model type that is not a Qwen-VL family livecc knows."""
        family = getattr(config, "model_type", None)
        if family not in FAMILIES:
            raise ValueError(f"model type {family!r} is not a Qwen-VL family livecc supports "
                             f"({', '.join(FAMILIES)})")
        vision = getattr(config, "vision_config", config)
        return cls(time_interval=rope_time_interval(config, temporal_patch_size, fps), timestamps=FAMILIES[family],
                   fps=fps, temporal_patch_size=temporal_patch_size,
                   merge_size=int(getattr(vision, "spatial_merge_size", 2)))

    def block(self, n_frames: int, start: float = 0.0) -> str:
        """The text of ``n_frames`` frames from ``start`` seconds, one pad per LLM block (expanded
        by :meth:`sequence` to the tokens of :meth:`llm_grids`). A last pair short of a frame
        repeats its last frame, as the patchifier and Hugging Face's timestamps do."""
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

    def sequence(self, tokenizer, ids: TokenIds, text: str, video_grids: torch.Tensor,
                 image_grids: torch.Tensor | None = None, prefix: list[int] = (),
                 start: int = 0) -> tuple[torch.Tensor, torch.Tensor, int]:
        """``(input_ids [L], position_ids [3, L], next position)`` of ``prefix`` ids followed by
        ``text``: each ``<|video_pad|>`` of the text (one per :meth:`block`) expanded to the LLM
        tokens of its block of ``video_grids`` (the ViT grids ``[n, 3]``), each ``<|image_pad|>``
        to those of its ``image_grids`` row, and M-RoPE positions from ``start``."""
        input_ids = torch.tensor([*prefix, *tokenizer(text, add_special_tokens=False).input_ids], dtype=torch.long)
        blocks = self.llm_grids(video_grids)
        input_ids = expand_pads(input_ids, ids.video_pad, self._tokens(blocks))
        if image_grids is not None:
            input_ids = expand_pads(input_ids, ids.image_pad, self._tokens(image_grids))
        return (input_ids, *self.positions(input_ids, ids, video_grids, image_grids, start))

    def positions(self, input_ids: torch.Tensor, ids: TokenIds, video_grids: torch.Tensor,
                  image_grids: torch.Tensor | None = None, start: int = 0) -> tuple[torch.Tensor, int]:
        """M-RoPE positions ``[3, L]`` of ``input_ids`` whose vision pads are already expanded, and the
        next position; images and video blocks are placed in the order they appear."""
        grids = {ids.video_pad: self.llm_grids(video_grids)}
        if image_grids is not None:
            grids[ids.image_pad] = image_grids
        return mrope_position_ids(input_ids, grids, self.merge_size, start, self.time_interval)

    def _tokens(self, grids: torch.Tensor) -> list[int]:
        return (grids.prod(-1) // self.merge_size**2).tolist()
