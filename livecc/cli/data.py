"""``livecc data STAGE``: the data pipeline's stages, sharded, resumable and accounted."""

from __future__ import annotations

import functools

from .common import chat_client, failures_exit, request_limits

__all__ = ["add_parser"]

# Arguments that change how a stage runs or reports, not what it writes: outside the fingerprint.
RUN_ONLY = {"func", "command", "data_command", "inputs", "out", "shard", "num_shards", "batch_size", "quiet",
            "verbose", "engine", "ray_workers", "ray_window", "ray_cpus", "ray_gpus", "overwrite", "allow_failures",
            "api_key", "rps", "concurrency", "timeout", "max_retries", "deadline", "device"}


def _pair(text: str) -> tuple[float, float]:
    low, _, high = text.partition(",")
    return float(low), float(high)


def make_stage(args):
    """The stage the arguments describe (called in each Ray actor too)."""
    from ..data import pipeline as p

    if args.data_command == "asr":
        vocabulary = p.read_vocabulary(args.vocabulary) if args.vocabulary else None
        return p.AsrStage(p.load_engine(args.asr, args.model, vocabulary, args.device), args.video_root,
                          args.chunk_s, allow_absolute_paths=args.allow_absolute_paths)
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
    return p.PromptStage(chat_client(args, args.llm), concurrency=args.concurrency)


def run(args) -> int:
    """Run a data pipeline stage over JSONL inputs (sharded, resumable, accounted)."""
    from ..data.pipeline import run_stage, shard_paths

    if args.engine == "ray":
        from ..data.pipeline.ray_engine import RayStage

        stage = RayStage(args.data_command, functools.partial(make_stage, args), window=args.ray_window,
                         workers=args.ray_workers, num_cpus=args.ray_cpus, num_gpus=args.ray_gpus)
    else:
        stage = make_stage(args)
    num_shards = 1 if args.data_command == "rank" else args.num_shards
    shard = args.shard if num_shards > 1 else 0
    options = {k: v for k, v in vars(args).items() if k not in RUN_ONLY}
    report = run_stage(stage, args.inputs, args.out, shard=shard, num_shards=num_shards, batch_size=args.batch_size,
                       progress=not args.quiet, options=options, overwrite=args.overwrite)
    print(report.summary())
    if hasattr(stage, "summary"):  # what a stage run here measured of itself (the ASR's audio hours)
        print(stage.summary())
    side = shard_paths(args.out, args.data_command, shard, num_shards)["side"]
    return failures_exit(f"data {args.data_command}", sum(report.failed.values()), args.allow_failures, str(side))


def _asr_options(st) -> None:
    from ..data.pipeline import ENGINES

    st.add_argument("--asr", choices=ENGINES, default="pocketsphinx", help="pocketsphinx (English, shipped with "
                    "its wheel), whisper (a local checkpoint) or faster-whisper (a local CTranslate2 one), --model")
    st.add_argument("--model", default=None, help="local Whisper checkpoint directory (the Whisper engines)")
    st.add_argument("--vocabulary", default=None, help="file of the words the speech may hold: a grammar for "
                    "pocketsphinx, the prompt or hotwords for the Whisper engines")
    st.add_argument("--chunk-s", type=float, default=30.0, help="longest piece of audio heard at once, cut at silences")
    st.add_argument("--video-root", default=None, help="directory the inputs' video paths are relative to")
    st.add_argument("--allow-absolute-paths", action="store_true", help="admit absolute video paths")
    st.add_argument("--device", default=None)


def _clips_options(st) -> None:
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
    st.add_argument("--allow-absolute-paths", action="store_true", help="admit absolute video and transcript paths")


def _rank_options(st) -> None:
    st.add_argument("--top", type=int, required=True)


def _lm_filter_options(st) -> None:
    st.add_argument("--model", required=True, help="local causal LM directory (e.g. Qwen2-1.5B-Instruct)")
    st.add_argument("--keep", default=None, help="LOW,HIGH (default 1.5,6.5; with --sft 1.5,5)")
    st.add_argument("--sft", action="store_true")
    st.add_argument("--device", default=None)


def _talking_head_options(st) -> None:
    st.add_argument("--model", default=None, help="local Qwen2-VL directory for the default scorer")
    st.add_argument("--scorer", default=None, help="'qwen-vl' (default with --model) or module:attribute")
    st.add_argument("--video-root", default=None)
    st.add_argument("--threshold", type=float, default=0.3)
    st.add_argument("--allow-absolute-paths", action="store_true", help="admit absolute video paths")


def _prompts_options(st) -> None:
    st.add_argument("--base-url", default=None, help="OpenAI-compatible endpoint (env OPENAI_BASE_URL)")
    st.add_argument("--llm", default="gpt-4o-2024-08-06", help="model name (env key OPENAI_API_KEY)")
    st.add_argument("--api-key", default=None)
    st.add_argument("--azure-api-version", default=None)
    st.add_argument("--concurrency", type=int, default=8)
    st.add_argument("--rps", type=float, default=None, help="requests per second limit")
    request_limits(st)


# name -> (what it does, its own options)
STAGES = {
    "asr": ("B2: word-timed transcripts heard in the videos' audio (one video per input line)", _asr_options),
    "clips": ("A1 / B3 clipping of word-timed transcripts (one video per input line) into records", _clips_options),
    "rank": ("keep the N clips with the largest vocabulary (A1; all shards' clip files as inputs)", _rank_options),
    "lm-filter": ("A2 / B4: per-clip text loss under a causal LM from a local directory", _lm_filter_options),
    "talking-head": ("A3 / B5: drop talking-head clips (Qwen2-VL scorer, or a precomputed speaker ratio)",
                     _talking_head_options),
    "prompts": ("B6: generate SFT user prompts through an OpenAI-compatible chat endpoint", _prompts_options),
}


def _run_options(st, name: str) -> None:
    """How every stage runs: inputs, outputs, shards, resumption, failures and the engine."""
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
                    help="ray: the stage runs on Ray actors (RAY_ADDRESS joins a cluster)")
    st.add_argument("--ray-workers", type=int, default=2, help="actors, each with its own stage")
    st.add_argument("--ray-window", type=int, default=64, help="batches in flight at once (bounds memory)")
    st.add_argument("--ray-cpus", type=float, default=1.0, help="CPUs per actor")
    st.add_argument("--ray-gpus", type=float, default=0.0, help="GPUs per actor")


def add_parser(sub) -> None:
    data = sub.add_parser("data", help=run.__doc__, description=run.__doc__)
    data_sub = data.add_subparsers(dest="data_command", required=True, metavar="STAGE")
    for name, (text, options) in STAGES.items():
        st = data_sub.add_parser(name, help=text, description=text)
        _run_options(st, name)
        options(st)
        st.set_defaults(func=run)
