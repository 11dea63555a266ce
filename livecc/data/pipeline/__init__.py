"""The LiveCC data production pipeline (``docs/spec.md`` section 3): speech recognition, clipping,
ranking, LM-loss and talking-head filters and SFT prompt generation, each a stage run by
:func:`run_stage`."""

from .asr import ENGINES, AsrStage, load_engine, read_vocabulary
from .clips import ClipRules, ClipStage, RankStage, cut_clips, rank_threshold, split_at_gaps, vocabulary_size
from .lm_filter import LMFilterStage, clip_text_losses
from .prompts import PromptStage
from .runner import Outcome, Stage, StageMismatchError, StageReport, run_stage, shard_paths
from .talking_head import QwenVLTalkingHead, TalkingHeadStage, load_scorer

__all__ = [
    "ENGINES", "AsrStage", "ClipRules", "ClipStage", "LMFilterStage", "Outcome", "PromptStage", "QwenVLTalkingHead",
    "RankStage", "Stage", "StageMismatchError", "StageReport", "TalkingHeadStage", "clip_text_losses", "cut_clips",
    "load_engine", "load_scorer", "rank_threshold", "read_vocabulary", "run_stage", "shard_paths", "split_at_gaps",
    "vocabulary_size",
]
