"""The ``livecc`` command line: one entry point, one subcommand per job."""

from __future__ import annotations

import argparse
import functools
import json
import logging
import os
import sys
import time
import traceback
from pathlib import Path

__all__ = ["main"]


def _render_compact(sample, tokenizer) -> str:
    """The sample's decoded text with each run of video pads shown as one ``<|video_pad|>xN``."""
    from .qwen2vl import vision_runs

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


MODEL_HELP = "local Qwen2-VL, Qwen2.5-VL or Qwen3-VL checkpoint directory, or 'tiny' / 'tiny:qwen3_vl' (random)"


def cmd_demo(args) -> int:
    """Synthesize commentated clips, train a tiny model on them, stream held-out clips, and score."""
    from .demo import DemoConfig, run_demo

    run_demo(DemoConfig(out=args.out, train_clips=args.train_clips, test_clips=args.test_clips,
                        duration=args.duration, steps=args.steps, seed=args.seed, realtime=not args.fast,
                        arch=args.arch))
    return 0


def cmd_sample(args) -> int:
    """Build and print the training sample of record INDEX of a JSONL file (a Live-CC record's
    streaming sequence, or an ordinary chat's conversation sample)."""
    from .data.records import ClipRecord, SeekableRecords
    from .data.sequence import build_conversation_sample, build_streaming_sample, is_streaming_record
    from .qwen2vl import VideoFormat, load_processor, offline_processor

    processor = load_processor(args.processor) if args.processor else offline_processor(args.arch)
    records = SeekableRecords(args.records)
    raw, source = records[args.index], f"{args.records}: record {args.index}"
    t0 = time.perf_counter()
    common = dict(video_root=args.video_root, allow_absolute_paths=args.allow_absolute_paths, source=source,
                  video=VideoFormat(timestamps=args.arch == "qwen3_vl"))
    if is_streaming_record(raw):
        sample = build_streaming_sample(ClipRecord.from_messages(raw, source), processor,
                                        with_context=args.with_context, **common)
    else:
        sample = build_conversation_sample(raw, processor, **common)
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
    """Comment on a video file or live stream in real time; end with a latency summary (also on Ctrl-C)."""
    from .infer import StreamingSession, iter_windows, run_stream
    from .models import load_model
    from .serve.vtt import VttWriter

    model, processor = load_model(args.model, args.device)
    config = _session_config(model, args, query=args.query)
    session = StreamingSession(model, processor, config, cuda_graphs=not args.no_cuda_graphs)
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


def _session_config(model, args, **more):
    """The model's own streaming settings (as it was trained: window plan, pixel bounds), with
    what the command line sets."""
    from .infer import SessionConfig

    given = {k: getattr(args, k) for k in _SESSION_FLAGS if getattr(args, k, None) is not None}
    return SessionConfig.for_model(model, **given, **more)


def _session_flags(parser: argparse.ArgumentParser) -> None:
    """Flags that override a stream's settings; unset ones come from the checkpoint or SessionConfig."""
    from .infer import SessionConfig

    d = SessionConfig()
    parser.add_argument("--max-new-tokens", type=int, default=None, help=f"per window (default {d.max_new_tokens})")
    parser.add_argument("--repetition-penalty", type=float, default=None, help=f"default {d.repetition_penalty}")
    parser.add_argument("--horizon", type=float, default=None,
                        help=f"seconds of video kept in the KV cache (default {d.horizon:g})")
    parser.add_argument("--min-pixels", type=int, default=None, help="pixels per frame at least (default: the "
                        f"checkpoint's, else {d.min_pixels})")
    parser.add_argument("--max-pixels", type=int, default=None, help="pixels per frame at most (default: the "
                        f"checkpoint's, else {d.max_pixels})")


_SESSION_FLAGS = ("max_new_tokens", "repetition_penalty", "horizon", "min_pixels", "max_pixels")


def _failures_exit(command: str, failed: int, allow: bool, where: str) -> int:
    """The exit code of a batch job: 3 when items failed (they are listed in ``where``) unless allowed."""
    if failed and not allow:
        print(f"livecc {command}: {failed} items failed (see {where}); --allow-failures accepts that",
              file=sys.stderr)
        return 3
    return 0


def cmd_serve(args) -> int:
    """Serve live commentary: a page at / and an HTTP API, every stream stepped together on one engine."""
    import uvicorn

    from .models import load_model
    from .serve import Hub, create_app
    from .serve.sources import SourcePolicy

    if args.api_key is not None and not args.api_key:
        print("livecc serve: --api-key '' would let anyone in; give a key, or leave the option out", file=sys.stderr)
        return 2
    model, processor = load_model(args.model, args.device)
    config = _session_config(model, args)
    hub = Hub(model, processor, max_streams=args.max_streams, config=config, upload_dir=args.upload_dir,
              max_viewers=args.max_viewers)
    origins = tuple(o.strip() for o in args.allowed_origins.split(",") if o.strip()) if args.allowed_origins else ()
    app = create_app(hub, api_key=args.api_key, max_upload_bytes=args.max_upload_mb << 20,
                     policy=SourcePolicy(allow_private=args.allow_private_sources), allowed_origins=origins)
    key = f"?key={args.api_key}" if args.api_key else ""
    print(f"livecc serve: http://{args.host}:{args.port}/{key} ({args.max_streams} streams at most, uploads in "
          f"{hub.upload_dir}; frames at {config.min_pixels}-{config.max_pixels} pixels, windows of "
          f"{config.plan.initial_frames} then {config.plan.frames_per_window} frames)", flush=True)
    try:
        uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    finally:
        hub.shutdown()
    return 0


def cmd_cc_generate(args) -> int:
    """Generate LiveSports-3K commentary for every event (resumable, shardable; a rerun retries failed events)."""
    from .eval import cc_generate, load_events
    from .models import TINY_MODELS, load_model

    model, processor = load_model(args.model, args.device)
    made_by = {"model": args.model if args.model in TINY_MODELS else str(Path(args.model).resolve()),
               "annotations": str(Path(args.annotations).resolve())}
    counts = cc_generate(load_events(args.annotations), model, processor, args.video_root, args.out,
                         style=args.style, shard=args.shard, num_shards=args.num_shards,
                         allow_absolute_paths=args.allow_absolute_paths, made_by=made_by, overwrite=args.overwrite)
    print("summary: " + " ".join(f"{k}={v}" for k, v in counts.items()))
    return _failures_exit("eval cc-generate", counts["failed"], args.allow_failures,
                          str(Path(args.out).with_suffix(".failed.jsonl")))


def cmd_cc_judge(args) -> int:
    """Judge predictions against a baseline with an LLM, both orders; print the win rate."""
    from .chat import ChatClient
    from .eval import load_events, read_predictions, run_judge

    client = ChatClient(args.base_url, args.judge_model, args.api_key, azure_api_version=args.azure_api_version,
                        requests_per_second=args.rps, timeout=args.timeout, max_retries=args.max_retries,
                        deadline=args.deadline)
    preds = {k: r["pred"] for k, r in read_predictions(args.predictions).items()}
    base = {k: r["pred"] for k, r in read_predictions(args.baseline).items()}
    result = run_judge(load_events(args.annotations), preds, base, args.model_id, args.baseline_id, client,
                       args.out, workers=args.workers)
    print(f"Winning Rate for {args.model_id} vs. {args.baseline_id}: {result['win_rate']:.2f}% "
          f"({result['events']} events; {result['asked']} asked, {result['cached']} cached)")
    for sport, rate in result["per_sport"].items():
        print(f"  {sport}: {rate:.2f}%")
    return 0


def cmd_cc_score(args) -> int:
    """Print the win rate of a verdict file (wins / 2N; ties count as non-wins)."""
    from .eval import read_verdicts, win_rate

    verdicts = read_verdicts(args.verdicts)
    ids = sorted({v[k] for v in verdicts for k in ("ab_winner", "ba_winner")} - {"tie"})
    if args.model_id not in ids and not args.allow_no_wins:
        raise ValueError(f"{args.verdicts}: model id {args.model_id!r} wins no judgement there (ids that do: "
                         f"{', '.join(ids) or 'none'}); --allow-no-wins scores it 0%")
    rate, n = win_rate(verdicts, args.model_id)
    print(f"Winning Rate for {args.model_id}: {rate:.2f}% over {n} events")
    return 0


def cmd_mcq(args) -> int:
    """Multiple-choice accuracy from the option letters' logits after 'Answer:'."""
    from .eval import load_questions, score_mcq
    from .models import load_model

    model, processor = load_model(args.model, args.device)
    result = score_mcq(model, processor, load_questions(args.questions), args.video_root, args.out,
                       allow_absolute_paths=args.allow_absolute_paths)
    print(f"accuracy: {result['accuracy']:.2f}% over {result['answered']} questions ({result['failed']} failed"
          + (f": {result['failed_by_type']}" if result["failed"] else "") + ")")
    for qtype, acc in result["per_type"].items():
        print(f"  {qtype}: {acc:.2f}%")
    for failure in result["failures"]:
        print(f"  failed: question {failure['index']}: {failure['error']}", file=sys.stderr)
    return _failures_exit("eval mcq", result["failed"], args.allow_failures, "the failures above")


def cmd_train(args) -> int:
    """Train with the streaming objective (torchrun for several GPUs or machines). A rerun in the
    same output_dir continues from its latest complete checkpoint."""
    from .train import load_config, train

    cfg = load_config(args.config, args.overrides)
    result = train(cfg, resume=args.resume, restart=args.restart)
    failed = sum(result["summary"]["data_errors"].values())
    code = 0
    if failed and not cfg.allow_failures:
        print(f"livecc train: {failed} records failed to build, counted once per epoch "
              f"(see {cfg.output_dir}/rejects.rank*.jsonl); "
              "set allow_failures=true to accept that", file=sys.stderr)
        code = 3
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        # Everything is written and the process group is gone. A rank that decoded with decord
        # can still abort in C++ static destructors at interpreter exit under torchrun ("terminate
        # called without an active exception", about one run in five), failing a finished run.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


def cmd_bench(args) -> int:
    """Run livecc's benchmarks that fit this machine and write their results (see `livecc bench -h`)."""
    from .bench import main as bench_main

    return bench_main(args.bench_args)


def _pair(text: str) -> tuple[float, float]:
    low, _, high = text.partition(",")
    return float(low), float(high)


def _data_stage(args):
    from .data import pipeline as p

    if args.data_command == "clips":
        rules = p.ClipRules(sft=args.sft, max_gap=args.max_gap, max_duration=args.max_duration,
                            min_duration=args.min_duration, min_rate=args.min_rate, max_rate=args.max_rate)
        categories = set(args.categories.split(",")) if args.categories else None
        return p.ClipStage(rules, args.transcript_root, categories, args.language, args.min_language_score,
                           video_root=args.video_root, allow_absolute_paths=args.allow_absolute_paths)
    if args.data_command == "rank":
        return p.RankStage(p.rank_threshold(args.inputs, args.top))
    if args.data_command == "lm-filter":
        keep = _pair(args.keep) if args.keep else ((1.5, 5.0) if args.sft else (1.5, 6.5))
        return p.LMFilterStage(args.model, keep, args.device)
    if args.data_command == "talking-head":
        scorer = p.load_scorer(args.scorer or "qwen-vl", args.model) if args.scorer or args.model else None
        return p.TalkingHeadStage(scorer, args.video_root, args.threshold,
                                  allow_absolute_paths=args.allow_absolute_paths)
    from .chat import ChatClient

    client = ChatClient(args.base_url, args.llm, args.api_key, azure_api_version=args.azure_api_version,
                        requests_per_second=args.rps, timeout=args.timeout, max_retries=args.max_retries,
                        deadline=args.deadline)
    return p.PromptStage(client, concurrency=args.concurrency)


# Arguments that change how a stage runs or reports, not what it writes: outside the fingerprint.
_RUN_ONLY = {"func", "command", "data_command", "inputs", "out", "shard", "num_shards", "batch_size", "quiet",
             "verbose", "engine", "ray_workers", "ray_window", "ray_cpus", "ray_gpus", "overwrite", "allow_failures",
             "api_key", "rps", "concurrency", "timeout", "max_retries", "deadline", "device"}


def cmd_data(args) -> int:
    """Run a data pipeline stage over JSONL inputs (sharded, resumable, accounted)."""
    from .data.pipeline import run_stage, shard_paths

    if args.engine == "ray":
        from .data.pipeline.ray_engine import RayStage

        stage = RayStage(args.data_command, functools.partial(_data_stage, args), window=args.ray_window,
                         workers=args.ray_workers, num_cpus=args.ray_cpus, num_gpus=args.ray_gpus)
    else:
        stage = _data_stage(args)
    num_shards = 1 if args.data_command == "rank" else args.num_shards
    shard = args.shard if num_shards > 1 else 0
    options = {k: v for k, v in vars(args).items() if k not in _RUN_ONLY}
    report = run_stage(stage, args.inputs, args.out, shard=shard, num_shards=num_shards, batch_size=args.batch_size,
                       progress=not args.quiet, options=options, overwrite=args.overwrite)
    print(report.summary())
    side = shard_paths(args.out, args.data_command, shard, num_shards)["side"]
    return _failures_exit(f"data {args.data_command}", sum(report.failed.values()), args.allow_failures, str(side))


def _request_limits(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for one answer")
    parser.add_argument("--max-retries", type=int, default=4, help="retries of a failed request (said on stderr)")
    parser.add_argument("--deadline", type=float, default=300.0,
                        help="seconds one request may take over all its retries")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="livecc", description="LiveCC: video LLMs trained on streaming ASR.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress and backend choices")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = sub.add_parser("demo", help=cmd_demo.__doc__, description=cmd_demo.__doc__)
    demo.add_argument("--out", default="demo_out", help="directory for clips, records and the checkpoint")
    demo.add_argument("--train-clips", type=int, default=96)
    demo.add_argument("--test-clips", type=int, default=6)
    demo.add_argument("--duration", type=float, default=12.0, help="clip length in seconds")
    demo.add_argument("--steps", type=int, default=None, help="training steps (default: 450, Qwen3-VL 700)")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--fast", action="store_true", help="stream held-out clips as fast as possible")
    demo.add_argument("--arch", choices=("qwen2_vl", "qwen3_vl"), default="qwen2_vl",
                      help="the tiny model's architecture")
    demo.set_defaults(func=cmd_demo)

    sample = sub.add_parser("sample", help=cmd_sample.__doc__, description=cmd_sample.__doc__)
    sample.add_argument("records", help="Live-CC JSONL file (with or without the seek line)")
    sample.add_argument("--index", type=int, default=0)
    sample.add_argument("--video-root", default=None, help="directory the records' video paths are relative to")
    sample.add_argument("--processor", default=None, help="local processor directory (default: offline)")
    sample.add_argument("--arch", choices=("qwen2_vl", "qwen3_vl"), default="qwen2_vl",
                        help="the sample format: Qwen2-VL's, or Qwen3-VL's timestamped frame pairs")
    sample.add_argument("--with-context", action="store_true", help="put title / previous ASR in the first turn")
    sample.add_argument("--allow-absolute-paths", action="store_true", help="admit absolute video paths in records")
    sample.set_defaults(func=cmd_sample)

    stream = sub.add_parser("stream", help=cmd_stream.__doc__, description=cmd_stream.__doc__)
    stream.add_argument("source", help="video file, URL (rtsp/http/udp), or - for a stream on stdin")
    stream.add_argument("--model", required=True, help=MODEL_HELP)
    stream.add_argument("--query", default="", help="user prompt in the first turn")
    stream.add_argument("--jsonl", default=None, help="also write each window's commentary here")
    stream.add_argument("--vtt", default=None, help="also write the commentary as WebVTT subtitles here")
    stream.add_argument("--fast", action="store_true", help="as fast as possible instead of real-time pace")
    stream.add_argument("--format", default=None, help="container format for pipes (e.g. mpegts)")
    _session_flags(stream)
    stream.add_argument("--max-lag", type=float, default=1.0, help="seconds behind real time before dropping")
    stream.add_argument("--timeout", type=float, default=10.0,
                        help="seconds to wait for the source to open and for each read (0: forever)")
    stream.add_argument("--device", default=None)
    stream.add_argument("--no-cuda-graphs", action="store_true", help="launch decode steps eagerly on GPU")
    stream.set_defaults(func=cmd_stream)

    serve = sub.add_parser("serve", help=cmd_serve.__doc__, description=cmd_serve.__doc__)
    serve.add_argument("--model", required=True, help=MODEL_HELP)
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default: this machine only)")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--max-streams", type=int, default=8, help="streams served at once (more: HTTP 429)")
    serve.add_argument("--api-key", default=None, help="require this key (Authorization: Bearer KEY)")
    serve.add_argument("--upload-dir", default=None, help="where uploads are kept while their stream runs "
                       "(default: a new temporary directory, removed at exit)")
    serve.add_argument("--max-upload-mb", type=int, default=512)
    serve.add_argument("--max-viewers", type=int, default=16, help="viewers of one stream at once")
    serve.add_argument("--allow-private-sources", action="store_true", help="read URLs on loopback, private and "
                       "link-local addresses too (a trusted network only: the server fetches what it is given)")
    serve.add_argument("--allowed-origins", default=None, help="comma-separated web origins, besides the page's "
                       "own, that may drive the server from a browser (e.g. https://app.example)")
    _session_flags(serve)
    serve.add_argument("--device", default=None)
    serve.set_defaults(func=cmd_serve)

    bench = sub.add_parser("bench", help=cmd_bench.__doc__, description=cmd_bench.__doc__, add_help=False)
    bench.add_argument("bench_args", nargs=argparse.REMAINDER, help="NAME ... --out DIR (livecc bench -h)")
    bench.set_defaults(func=cmd_bench)

    from .train.config import describe_config

    tr = sub.add_parser("train", help=cmd_train.__doc__, description=cmd_train.__doc__,
                        epilog="config keys (type = default):\n" + describe_config(),
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    tr.add_argument("--config", default=None, help="JSON or YAML config (see configs/)")
    tr.add_argument("--resume", default=None, help="continue from this checkpoint directory (default: the latest "
                                                   "complete one in output_dir)")
    tr.add_argument("--restart", action="store_true", help="remove output_dir's checkpoints, metrics and rejects "
                                                          "and start at step 0")
    tr.add_argument("overrides", nargs="*", help="key=value overrides, values in JSON (lr=1e-5 max_steps=10)")
    tr.set_defaults(func=cmd_train)

    ev = sub.add_parser("eval", help="LiveSports-3K commentary and multiple-choice evaluation")
    ev_sub = ev.add_subparsers(dest="eval_command", required=True, metavar="EVAL")
    gen = ev_sub.add_parser("cc-generate", help=cmd_cc_generate.__doc__, description=cmd_cc_generate.__doc__)
    gen.add_argument("--annotations", required=True, help="LiveSports-3K CC events (JSONL)")
    gen.add_argument("--video-root", required=True)
    gen.add_argument("--model", required=True, help=MODEL_HELP)
    gen.add_argument("--out", required=True, help="prediction JSONL (appended; a rerun resumes)")
    gen.add_argument("--style", choices=["instruct", "base"], default="instruct")
    gen.add_argument("--shard", type=int, default=0)
    gen.add_argument("--num-shards", type=int, default=1)
    gen.add_argument("--device", default=None)
    gen.add_argument("--allow-absolute-paths", action="store_true", help="admit absolute video paths in events")
    gen.add_argument("--allow-failures", action="store_true", help="exit 0 even when events failed")
    gen.add_argument("--overwrite", action="store_true", help="replace predictions made with other settings")
    gen.set_defaults(func=cmd_cc_generate)
    judge = ev_sub.add_parser("cc-judge", help=cmd_cc_judge.__doc__, description=cmd_cc_judge.__doc__)
    judge.add_argument("--annotations", required=True, help="events with event_asr_text (and class)")
    judge.add_argument("--predictions", required=True)
    judge.add_argument("--baseline", required=True, help="the baseline's predictions (GPT-4o.jsonl)")
    judge.add_argument("--model-id", required=True)
    judge.add_argument("--baseline-id", default="GPT-4o")
    judge.add_argument("--out", required=True, help="verdicts JSONL (reference format)")
    judge.add_argument("--base-url", default=None, help="OpenAI-compatible endpoint (env OPENAI_BASE_URL)")
    judge.add_argument("--judge-model", default="gpt-4o-2024-08-06")
    judge.add_argument("--api-key", default=None, help="default: env OPENAI_API_KEY")
    judge.add_argument("--azure-api-version", default=None, help="set for Azure OpenAI endpoints")
    judge.add_argument("--workers", type=int, default=16)
    judge.add_argument("--rps", type=float, default=None, help="requests per second limit")
    _request_limits(judge)
    judge.set_defaults(func=cmd_cc_judge)
    score = ev_sub.add_parser("cc-score", help=cmd_cc_score.__doc__, description=cmd_cc_score.__doc__)
    score.add_argument("verdicts")
    score.add_argument("--model-id", required=True)
    score.add_argument("--allow-no-wins", action="store_true", help="score a model id that wins no judgement (0%%)")
    score.set_defaults(func=cmd_cc_score)
    mcq = ev_sub.add_parser("mcq", help=cmd_mcq.__doc__, description=cmd_mcq.__doc__)
    mcq.add_argument("questions", help="JSON/JSONL questions (LiveSports-3K QA, VideoMME, MVBench, OVOBench)")
    mcq.add_argument("--video-root", required=True)
    mcq.add_argument("--model", required=True)
    mcq.add_argument("--out", default=None, help="per-question predictions JSONL")
    mcq.add_argument("--device", default=None)
    mcq.add_argument("--allow-absolute-paths", action="store_true", help="admit absolute video paths in questions")
    mcq.add_argument("--allow-failures", action="store_true", help="exit 0 even when questions failed")
    mcq.set_defaults(func=cmd_mcq)

    data = sub.add_parser("data", help=cmd_data.__doc__, description=cmd_data.__doc__)
    data_sub = data.add_subparsers(dest="data_command", required=True, metavar="STAGE")
    stages = {
        "clips": "A1 / B3 clipping of word-timed transcripts (one video per input line) into records",
        "rank": "keep the N clips with the largest vocabulary (A1; all shards' clip files as inputs)",
        "lm-filter": "A2 / B4: per-clip text loss under a causal LM from a local directory",
        "talking-head": "A3 / B5: drop talking-head clips (Qwen2-VL scorer, or a precomputed speaker ratio)",
        "prompts": "B6: generate SFT user prompts through an OpenAI-compatible chat endpoint",
    }
    for name, text in stages.items():
        st = data_sub.add_parser(name, help=text, description=text)
        st.add_argument("inputs", nargs="+", help="JSONL input files")
        st.add_argument("--out", required=True, help="output directory (per-shard files; a rerun resumes)")
        st.add_argument("--shard", type=int, default=0)
        st.add_argument("--num-shards", type=int, default=1)
        st.add_argument("--batch-size", type=int, default=16 if name in ("lm-filter", "prompts") else 1)
        st.add_argument("--quiet", action="store_true", help="no progress bar")
        st.add_argument("--overwrite", action="store_true",
                        help="start the shard afresh when its stored outputs came from other inputs or options")
        st.add_argument("--allow-failures", action="store_true", help="exit 0 even when items failed")
        st.add_argument("--engine", choices=("local", "ray"), default="local",
                        help="ray: the stage runs on Ray Data actors (RAY_ADDRESS joins a cluster)")
        st.add_argument("--ray-workers", type=int, default=2, help="actors, each with its own stage")
        st.add_argument("--ray-window", type=int, default=64, help="batches per Ray Data job")
        st.add_argument("--ray-cpus", type=float, default=1.0, help="CPUs per actor")
        st.add_argument("--ray-gpus", type=float, default=0.0, help="GPUs per actor")
        st.set_defaults(func=cmd_data)
        if name == "clips":
            st.add_argument("--sft", action="store_true", help="B3 sentence rules (no previous-ASR context)")
            st.add_argument("--transcript-root", default=None)
            st.add_argument("--max-gap", type=float, default=3.0)
            st.add_argument("--max-duration", type=float, default=240.0)
            st.add_argument("--min-duration", type=float, default=30.0)
            st.add_argument("--min-rate", type=float, default=1.0)
            st.add_argument("--max-rate", type=float, default=4.0)
            st.add_argument("--categories", default=None, help="B1: comma-separated categories to keep")
            st.add_argument("--language", default=None, help="B1: keep this language (e.g. en)")
            st.add_argument("--min-language-score", type=float, default=0.9)
            st.add_argument("--video-root", default=None, help="check that every video exists under this directory")
            st.add_argument("--allow-absolute-paths", action="store_true",
                            help="admit absolute video and transcript paths")
        elif name == "rank":
            st.add_argument("--top", type=int, required=True)
        elif name == "lm-filter":
            st.add_argument("--model", required=True, help="local causal LM directory (e.g. Qwen2-1.5B-Instruct)")
            st.add_argument("--keep", default=None, help="LOW,HIGH (default 1.5,6.5; with --sft 1.5,5)")
            st.add_argument("--sft", action="store_true")
            st.add_argument("--device", default=None)
        elif name == "talking-head":
            st.add_argument("--model", default=None, help="local Qwen2-VL directory for the default scorer")
            st.add_argument("--scorer", default=None, help="'qwen-vl' (default with --model) or module:attribute")
            st.add_argument("--video-root", default=None)
            st.add_argument("--threshold", type=float, default=0.3)
            st.add_argument("--allow-absolute-paths", action="store_true", help="admit absolute video paths")
        else:
            st.add_argument("--base-url", default=None, help="OpenAI-compatible endpoint (env OPENAI_BASE_URL)")
            st.add_argument("--llm", default="gpt-4o-2024-08-06", help="model name (env key OPENAI_API_KEY)")
            st.add_argument("--api-key", default=None)
            st.add_argument("--azure-api-version", default=None)
            st.add_argument("--concurrency", type=int, default=8)
            st.add_argument("--rps", type=float, default=None, help="requests per second limit")
            _request_limits(st)

    words = sub.add_parser("words", help=cmd_words.__doc__, description=cmd_words.__doc__)
    words.add_argument("transcript")
    words.set_defaults(func=cmd_words)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["bench"]:  # its own parser, options and -h included
        return cmd_bench(argparse.Namespace(bench_args=argv[1:]))
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(name)s: %(message)s")
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print(f"livecc {args.command}: interrupted", file=sys.stderr)
        return 130
    except (ValueError, RuntimeError, OSError, LookupError) as e:  # bad input: a message, not a traceback
        if args.verbose:
            traceback.print_exc()
        print(f"livecc {args.command}: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
