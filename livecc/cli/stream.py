"""``livecc stream``: commentary on one video file or live source, in real time."""

from __future__ import annotations

import json
import sys

from .common import MODEL_HELP, compile_while_loading, session_config, session_flags

__all__ = ["add_parser", "run"]


def run(args) -> int:
    """Comment on a video file or live stream in real time; end with a latency summary (also on Ctrl-C)."""
    from ..infer import StreamingSession, iter_windows, run_stream
    from ..models import load_model
    from ..serve.vtt import VttWriter

    compile_while_loading(args.model, args.device)
    model, processor = load_model(args.model, args.device)
    config = session_config(model, args, query=args.query)
    session = StreamingSession(model, processor, config, cuda_graphs=not args.no_cuda_graphs)
    # before the first window: the pool, the graphs and (on a GPU) the kernels compiled in parallel processes
    warm = session.engine.warm_up(1, config.cache_tokens(session.engine.spec))
    print("warmed up: " + ", ".join(f"{k.removesuffix('_s')} {v:.1f} s" for k, v in warm.items()), file=sys.stderr)
    out = open(args.jsonl, "w") if args.jsonl else None
    subtitles = VttWriter(args.vtt) if args.vtt else None

    def show(result) -> None:
        print(f"[{result.start:7.1f}-{result.end:7.1f}s] {result.text}", flush=True)
        if out:
            out.write(json.dumps({"start": result.start, "end": result.end, "text": result.text,
                                  "timings_ms": result.timings, "tokens_per_s": result.tokens_per_s}) + "\n")
        if subtitles:
            subtitles.write(result.start, result.end, result.text)

    source = "pipe:0" if args.source == "-" else args.source
    timeout = args.timeout if args.timeout > 0 else None
    try:
        report = run_stream(session, iter_windows(source, config.plan, format=args.format, timeout=timeout),
                            realtime=not args.fast, max_lag=args.max_lag, on_result=show)
    finally:
        if out:
            out.close()
        if subtitles:
            subtitles.close()
    print("summary: " + " ".join(f"{k}={v}" for k, v in report.summary().items()))
    return 130 if report.interrupted else 0


def add_parser(sub) -> None:
    stream = sub.add_parser("stream", help=run.__doc__, description=run.__doc__)
    stream.add_argument("source", help="video file, URL (rtsp/http/udp), or - for a stream on stdin")
    stream.add_argument("--model", required=True, help=MODEL_HELP)
    stream.add_argument("--query", default="", help="user prompt in the first turn")
    stream.add_argument("--jsonl", default=None, help="also write each window's commentary here")
    stream.add_argument("--vtt", default=None, help="also write the commentary as WebVTT subtitles here")
    stream.add_argument("--fast", action="store_true", help="as fast as possible instead of real-time pace")
    stream.add_argument("--format", default=None, help="container format for pipes (e.g. mpegts)")
    session_flags(stream)
    stream.add_argument("--max-lag", type=float, default=1.0, help="seconds behind real time before dropping")
    stream.add_argument("--timeout", type=float, default=10.0,
                        help="seconds to wait for the source to open and for each read (0: forever)")
    stream.add_argument("--device", default=None)
    stream.add_argument("--no-cuda-graphs", action="store_true", help="launch decode steps eagerly on GPU")
    stream.set_defaults(func=run)
