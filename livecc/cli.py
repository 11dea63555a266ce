"""The ``livecc`` command line: one entry point, one subcommand per job."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

__all__ = ["main"]


def _render_compact(sample, tokenizer) -> str:
    """The sample's decoded text with each run of video pads shown as one ``<|video_pad|>xN``."""
    from .data.rope import vision_runs

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
    print(_render_compact(sample, tokenizer))
    n = sample.input_ids.numel()
    n_video = int(sum(g.prod() // 4 for g in sample.video_grid_thw))
    n_labels = int((sample.labels != -100).sum())
    print(f"windows={len(sample.windows)} tokens={n} vision={n_video} ({100 * n_video / n:.1f}%) "
          f"labelled={n_labels} patch_rows={tuple(sample.pixel_values_videos.shape)} built in {elapsed:.2f}s")


def cmd_demo(args) -> int:
    """Synthesize a commentated clip, then build and print its streaming training sample."""
    from .data.records import RecordWriter, SeekableRecords
    from .data.sequence import build_streaming_sample
    from .data.synth import synthesize_clip
    from .testing import offline_processor

    out = Path(args.out)
    t0 = time.perf_counter()
    record = synthesize_clip(out, "clip0", seed=args.seed, duration=args.duration)
    with RecordWriter(out / "records_with_seeks.jsonl") as writer:
        writer.write(record)
    print(f"wrote {out / record.video} and {out / 'records_with_seeks.jsonl'} "
          f"({len(record.words)} words) in {time.perf_counter() - t0:.2f}s")
    processor = offline_processor()
    t0 = time.perf_counter()
    reread = SeekableRecords(out / "records_with_seeks.jsonl").record(0)
    sample = build_streaming_sample(reread, processor, video_root=out)
    _print_sample(sample, processor.tokenizer, time.perf_counter() - t0)
    return 0


def cmd_sample(args) -> int:
    """Build and print the streaming sample of record INDEX of a JSONL file."""
    from .data.processor import load_processor
    from .data.records import SeekableRecords
    from .data.sequence import build_streaming_sample
    from .testing import offline_processor

    processor = load_processor(args.processor) if args.processor else offline_processor()
    record = SeekableRecords(args.records).record(args.index)
    t0 = time.perf_counter()
    sample = build_streaming_sample(record, processor, video_root=args.video_root, with_context=args.with_context)
    _print_sample(sample, processor.tokenizer, time.perf_counter() - t0)
    return 0


def cmd_words(args) -> int:
    """Parse a transcript (json3, vtt, srt, WhisperX JSON) and print its words as a text_stream."""
    from .data.words import load_words

    words = load_words(args.transcript)
    json.dump([[round(w.start, 3), round(w.end, 3), w.text] for w in words], sys.stdout, ensure_ascii=False)
    print()
    return 0


def cmd_stream(args) -> int:
    """Comment on a video file or live stream in real time; end with a latency summary."""
    from .infer import StreamingSession
    from .infer.stream import iter_windows, run_stream
    from .models import load_model

    model, processor = load_model(args.model, args.device)
    session = StreamingSession(model, processor, query=args.query, max_new_tokens=args.max_new_tokens,
                               repetition_penalty=args.repetition_penalty, horizon=args.horizon)
    out = open(args.jsonl, "w") if args.jsonl else None

    def show(result) -> None:
        print(f"[{result.start:7.1f}-{result.end:7.1f}s] {result.text}", flush=True)
        if out:
            out.write(json.dumps({"start": result.start, "end": result.end, "text": result.text,
                                  "timings_ms": result.timings}) + "\n")

    source = "pipe:0" if args.source == "-" else args.source
    try:
        report = run_stream(session, iter_windows(source, format=args.format), realtime=not args.fast,
                            max_lag=args.max_lag, on_result=show)
    finally:
        if out:
            out.close()
    print("summary: " + " ".join(f"{k}={v}" for k, v in report.summary().items()))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="livecc", description="LiveCC: video LLMs trained on streaming ASR.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress and backend choices")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = sub.add_parser("demo", help=cmd_demo.__doc__, description=cmd_demo.__doc__)
    demo.add_argument("--out", default="demo_out", help="directory for the clip and its record")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--duration", type=float, default=12.0, help="clip length in seconds")
    demo.set_defaults(func=cmd_demo)

    sample = sub.add_parser("sample", help=cmd_sample.__doc__, description=cmd_sample.__doc__)
    sample.add_argument("records", help="Live-CC JSONL file (with or without the seek line)")
    sample.add_argument("--index", type=int, default=0)
    sample.add_argument("--video-root", default=None, help="directory the records' video paths are relative to")
    sample.add_argument("--processor", default=None, help="local Qwen2-VL processor directory (default: offline)")
    sample.add_argument("--with-context", action="store_true", help="put title / previous ASR in the first turn")
    sample.set_defaults(func=cmd_sample)

    stream = sub.add_parser("stream", help=cmd_stream.__doc__, description=cmd_stream.__doc__)
    stream.add_argument("source", help="video file, URL (rtsp/http/udp), or - for a stream on stdin")
    stream.add_argument("--model", required=True, help="local Qwen2-VL checkpoint directory, or 'tiny'")
    stream.add_argument("--query", default="", help="user prompt in the first turn")
    stream.add_argument("--jsonl", default=None, help="also write each window's commentary here")
    stream.add_argument("--fast", action="store_true", help="as fast as possible instead of real-time pace")
    stream.add_argument("--format", default=None, help="container format for pipes (e.g. mpegts)")
    stream.add_argument("--max-new-tokens", type=int, default=16)
    stream.add_argument("--repetition-penalty", type=float, default=1.05)
    stream.add_argument("--horizon", type=float, default=240.0, help="seconds of video kept in the KV cache")
    stream.add_argument("--max-lag", type=float, default=1.0, help="seconds behind real time before dropping")
    stream.add_argument("--device", default=None)
    stream.set_defaults(func=cmd_stream)

    words = sub.add_parser("words", help=cmd_words.__doc__, description=cmd_words.__doc__)
    words.add_argument("transcript")
    words.set_defaults(func=cmd_words)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(name)s: %(message)s")
    try:
        return args.func(args)
    except (ValueError, RuntimeError, FileNotFoundError) as e:
        print(f"livecc {args.command}: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
