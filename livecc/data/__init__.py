"""Words, clip records, video frames, the streaming training sequence, packing and the data pipeline."""

from .packing import Pack, PackedLoader, SampleFailure, StreamingDataset, pack_samples
from .paths import UnsafePathError, resolve_under
from .records import ClipRecord, RecordError, RecordWriter, SeekableRecords, read_records
from .sequence import (
    EmptySampleError,
    StreamingSample,
    build_conversation_sample,
    build_streaming_sample,
    is_streaming_record,
)
from .video import FRAME_RULES, FpsSampler, VideoClip, VideoError, available_backends, decode_clip
from .words import TranscriptError, Word, load_words

__all__ = [
    "FRAME_RULES",
    "ClipRecord",
    "EmptySampleError",
    "FpsSampler",
    "Pack",
    "PackedLoader",
    "RecordError",
    "RecordWriter",
    "SampleFailure",
    "SeekableRecords",
    "StreamingDataset",
    "StreamingSample",
    "TranscriptError",
    "UnsafePathError",
    "VideoClip",
    "VideoError",
    "Word",
    "available_backends",
    "build_conversation_sample",
    "build_streaming_sample",
    "decode_clip",
    "is_streaming_record",
    "load_words",
    "pack_samples",
    "read_records",
    "resolve_under",
]
