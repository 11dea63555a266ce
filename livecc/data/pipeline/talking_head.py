"""A3 / B5: drop clips that are a talking head (the words would not need the video).

The scorer is pluggable: any callable ``(frames uint8 [8, H, W, 3]) -> P(talking head)``. The
default asks a Qwen2-VL model from a local directory about 8 uniformly sampled frames at 320x180
and reads P("Yes") against P("No"); clips scoring >= 0.3 are dropped. A record that already
carries an active-speaker ratio (``active_speaker_ratio``, from Light-ASD; B5) is judged by it
instead: kept when it lies in [0, 0.05].
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path

import torch

from ...models import load_model
from ...qwen_vl import VisionSpec, smart_resize, video_prompt_logits
from ..paths import video_under
from ..records import ClipRecord
from ..video import VideoError, decode_clip
from .runner import Outcome

__all__ = ["QwenVLTalkingHead", "TalkingHeadStage", "load_scorer", "sample_frames"]

QUESTION = ("Is this video a talking head, i.e. mostly one person speaking to the camera? "
            "Answer Yes or No.")


def sample_frames(path: str | Path, start: float | None, end: float | None, n: int = 8) -> torch.Tensor:
    """``n`` frames spread uniformly over ``[start, end]`` (uint8 ``[n, H, W, 3]``)."""
    if start is None or end is None:
        raise VideoError(f"{path}: a talking-head check needs the clip's start and end")
    return decode_clip(path, start, end, fps=n / (end - start), resize=False, rule="clip-start").frames[:n]


class QwenVLTalkingHead:
    """P(talking head) from a Qwen2-VL / Qwen2.5-VL model in a local directory (or a loaded one)."""

    def __init__(self, model_dir: str | Path | None = None, *, model=None, processor=None,
                 size: tuple[int, int] = (180, 320)):
        if model is None:
            model, processor = load_model(str(model_dir))
        self.model, self.processor = model.eval(), processor
        tokenizer = getattr(processor, "tokenizer", processor)
        self.yes, self.no = (tokenizer(w, add_special_tokens=False).input_ids[0] for w in ("Yes", "No"))
        factor = VisionSpec.from_processor(processor).factor
        self.size = smart_resize(*size, factor=factor, min_pixels=0, max_pixels=size[0] * size[1] * 1.2)

    def __call__(self, frames: torch.Tensor) -> float:
        logits = video_prompt_logits(self.model, self.processor, frames, self.size, QUESTION).float()
        return float(torch.softmax(logits[[self.yes, self.no]], 0)[0])


def load_scorer(spec: str, model_dir: str | None = None) -> Callable[[torch.Tensor], float]:
    """``"qwen-vl"`` (the default scorer on ``model_dir``) or ``"module:attribute"``: a scorer
    callable, or a class built with ``model_dir``."""
    if spec == "qwen-vl":
        if model_dir is None:
            raise ValueError("the qwen-vl talking-head scorer needs --model DIR")
        return QwenVLTalkingHead(model_dir)
    module, _, attr = spec.partition(":")
    scorer = getattr(importlib.import_module(module), attr)
    return scorer(model_dir) if isinstance(scorer, type) else scorer


class TalkingHeadStage:
    name = "talking-head"

    def __init__(self, scorer: Callable[[torch.Tensor], float] | None, video_root: str | Path | None = None,
                 threshold: float = 0.3, speaker_ratio: tuple[float, float] = (0.0, 0.05),
                 allow_absolute_paths: bool = False):
        self.scorer, self.video_root = scorer, video_root
        self.threshold, self.speaker_ratio = threshold, speaker_ratio
        self.allow_absolute_paths = allow_absolute_paths

    def process(self, items: list[tuple[int, object]]) -> list[Outcome]:
        return [self._one(index, raw) for index, raw in items]

    def _one(self, index: int, raw) -> Outcome:
        source = f"input {index}"
        try:
            record = ClipRecord.from_messages(raw, source)
            ratio = record.meta.get("active_speaker_ratio")
            if ratio is not None:
                low, high = self.speaker_ratio
                keep = isinstance(ratio, (int, float)) and low <= ratio <= high
                return Outcome(kept=[raw]) if keep else Outcome(dropped=[("active_speaker", raw)])
            if self.scorer is None:
                raise ValueError("no active_speaker_ratio and no talking-head scorer")
            path = video_under(self.video_root, record.video, source=source, allow_absolute=self.allow_absolute_paths)
            score = self.scorer(sample_frames(path, record.video_start, record.video_end))
        except (ValueError, VideoError) as e:
            return Outcome.failed(e)
        record.meta["talking_head"] = round(score, 4)
        out = record.to_messages()
        return Outcome(kept=[out]) if score < self.threshold else Outcome(dropped=[("talking_head", out)])
