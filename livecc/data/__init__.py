"""Words, clip records, video frames and the streaming training sequence."""

from .records import ClipRecord, RecordError, RecordWriter, SeekableRecords, read_records
from .sequence import EmptySampleError, StreamingSample, build_streaming_sample
from .video import PixelBudget, VideoClip, VideoError, decode_clip, smart_resize
from .words import TranscriptError, Word, load_words

__all__ = [
    "ClipRecord",
    "EmptySampleError",
    "PixelBudget",
    "RecordError",
    "RecordWriter",
    "SeekableRecords",
    "StreamingSample",
    "TranscriptError",
    "VideoClip",
    "VideoError",
    "Word",
    "build_streaming_sample",
    "decode_clip",
    "load_words",
    "read_records",
    "smart_resize",
]
