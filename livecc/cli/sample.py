"""``livecc sample`` and ``livecc words``: what a record and a transcript become."""

from __future__ import annotations

import json
import sys
import time

__all__ = ["add_parser"]


def render_compact(sample, tokenizer) -> str:
    """The sample's decoded text with each run of video pads shown as one ``<|video_pad|>xN``."""
    from ..qwen_vl import vision_runs

    ids = sample.input_ids
    pieces, cursor = [], 0
    pad = tokenizer.convert_tokens_to_ids("<|video_pad|>")
    for begin, end in vision_runs(ids == pad):
        pieces.append(tokenizer.decode(ids[cursor:begin]))
        pieces.append(f"<|video_pad|>x{end - begin}")
        cursor = end
    pieces.append(tokenizer.decode(ids[cursor:]))
    return "".join(pieces)


def _print_sample(sample, tokenizer, elapsed: float) -> None:
    print(render_compact(sample, tokenizer))
    n = sample.input_ids.numel()
    n_video = int(sum(g.prod() // 4 for g in sample.video_grid_thw))
    n_labels = int((sample.labels != -100).sum())
    print(f"windows={len(sample.windows)} tokens={n} vision={n_video} ({100 * n_video / n:.1f}%) "
          f"labelled={n_labels} patch_rows={tuple(sample.pixel_values_videos.shape)} built in {elapsed:.2f}s")


def run_sample(args) -> int:
    """Build and print the training sample of record INDEX of a JSONL file (a Live-CC record's
    streaming sequence, or an ordinary chat's conversation sample)."""
    from ..data.records import ClipRecord, SeekableRecords
    from ..data.sequence import build_conversation_sample, build_streaming_sample, is_streaming_record
    from ..qwen_vl import FAMILIES, VideoFormat, load_processor, offline_processor

    processor = load_processor(args.processor) if args.processor else offline_processor(args.arch)
    records = SeekableRecords(args.records)
    raw, source = records[args.index], f"{args.records}: record {args.index}"
    t0 = time.perf_counter()
    common = dict(video_root=args.video_root, allow_absolute_paths=args.allow_absolute_paths, source=source,
                  video=VideoFormat(timestamps=FAMILIES[args.arch]))
    if is_streaming_record(raw):
        sample = build_streaming_sample(ClipRecord.from_messages(raw, source), processor,
                                        with_context=args.with_context, **common)
    else:
        sample = build_conversation_sample(raw, processor, **common)
    _print_sample(sample, processor.tokenizer, time.perf_counter() - t0)
    return 0


def run_words(args) -> int:
    """Parse a transcript (json3, vtt, srt, WhisperX JSON) and print its words as a text_stream."""
    from ..data.words import load_words

    words = load_words(args.transcript)
    json.dump([[round(w.start, 3), round(w.end, 3), w.text] for w in words], sys.stdout, ensure_ascii=False)
    print()
    return 0


def add_parser(sub) -> None:
    sample = sub.add_parser("sample", help=run_sample.__doc__, description=run_sample.__doc__)
    sample.add_argument("records", help="Live-CC JSONL file (with or without the seek line)")
    sample.add_argument("--index", type=int, default=0)
    sample.add_argument("--video-root", default=None, help="directory the records' video paths are relative to")
    sample.add_argument("--processor", default=None, help="local processor directory (default: offline)")
    sample.add_argument("--arch", choices=("qwen2_vl", "qwen3_vl"), default="qwen2_vl",
                        help="the sample format: Qwen2-VL's, or Qwen3-VL's timestamped frame pairs")
    sample.add_argument("--with-context", action="store_true", help="put title / previous ASR in the first turn")
    sample.add_argument("--allow-absolute-paths", action="store_true", help="admit absolute video paths in records")
    sample.set_defaults(func=run_sample)

    words = sub.add_parser("words", help=run_words.__doc__, description=run_words.__doc__)
    words.add_argument("transcript")
    words.set_defaults(func=run_words)
