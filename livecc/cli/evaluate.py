"""``livecc eval``: LiveSports-3K commentary (generate, judge, score) and multiple-choice questions."""

from __future__ import annotations

import sys
from pathlib import Path

from .common import MODEL_HELP, chat_client, failures_exit, request_limits

__all__ = ["add_parser"]


def cc_generate(args) -> int:
    """Generate LiveSports-3K commentary for every event (resumable, shardable; a rerun retries failed events)."""
    from ..eval import cc_generate, load_events
    from ..models import TINY_MODELS, load_model

    model, processor = load_model(args.model, args.device)
    made_by = {"model": args.model if args.model in TINY_MODELS else str(Path(args.model).resolve()),
               "annotations": str(Path(args.annotations).resolve())}
    counts = cc_generate(load_events(args.annotations), model, processor, args.video_root, args.out,
                         style=args.style, shard=args.shard, num_shards=args.num_shards,
                         allow_absolute_paths=args.allow_absolute_paths, made_by=made_by, overwrite=args.overwrite)
    print("summary: " + " ".join(f"{k}={v}" for k, v in counts.items()))
    return failures_exit("eval cc-generate", counts["failed"], args.allow_failures,
                         str(Path(args.out).with_suffix(".failed.jsonl")))


def cc_judge(args) -> int:
    """Judge predictions against a baseline with an LLM, both orders; print the win rate."""
    from ..eval import load_events, read_predictions, run_judge

    preds = {k: r["pred"] for k, r in read_predictions(args.predictions).items()}
    base = {k: r["pred"] for k, r in read_predictions(args.baseline).items()}
    result = run_judge(load_events(args.annotations), preds, base, args.model_id, args.baseline_id,
                       chat_client(args, args.judge_model), args.out, workers=args.workers)
    print(f"Winning Rate for {args.model_id} vs. {args.baseline_id}: {result['win_rate']:.2f}% "
          f"({result['events']} events; {result['asked']} asked, {result['cached']} cached)")
    for sport, rate in result["per_sport"].items():
        print(f"  {sport}: {rate:.2f}%")
    return 0


def cc_score(args) -> int:
    """Print the win rate of a verdict file (wins / 2N; ties count as non-wins)."""
    from ..eval import read_verdicts, win_rate

    verdicts = read_verdicts(args.verdicts)
    ids = sorted({v[k] for v in verdicts for k in ("ab_winner", "ba_winner")} - {"tie"})
    if args.model_id not in ids and not args.allow_no_wins:
        raise ValueError(f"{args.verdicts}: model id {args.model_id!r} wins no judgement there (ids that do: "
                         f"{', '.join(ids) or 'none'}); --allow-no-wins scores it 0%")
    rate, n = win_rate(verdicts, args.model_id)
    print(f"Winning Rate for {args.model_id}: {rate:.2f}% over {n} events")
    return 0


def mcq(args) -> int:
    """Multiple-choice accuracy from the option letters' logits after 'Answer:'."""
    from ..eval import load_questions, score_mcq
    from ..models import load_model

    model, processor = load_model(args.model, args.device)
    result = score_mcq(model, processor, load_questions(args.questions), args.video_root, args.out,
                       allow_absolute_paths=args.allow_absolute_paths)
    print(f"accuracy: {result['accuracy']:.2f}% over {result['answered']} questions ({result['failed']} failed"
          + (f": {result['failed_by_type']}" if result["failed"] else "") + ")")
    for qtype, acc in result["per_type"].items():
        print(f"  {qtype}: {acc:.2f}%")
    for failure in result["failures"]:
        print(f"  failed: question {failure['index']}: {failure['error']}", file=sys.stderr)
    return failures_exit("eval mcq", result["failed"], args.allow_failures, "the failures above")


def add_parser(sub) -> None:
    ev = sub.add_parser("eval", help="LiveSports-3K commentary and multiple-choice evaluation")
    ev_sub = ev.add_subparsers(dest="eval_command", required=True, metavar="EVAL")
    gen = ev_sub.add_parser("cc-generate", help=cc_generate.__doc__, description=cc_generate.__doc__)
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
    gen.set_defaults(func=cc_generate)
    _judge_parser(ev_sub)
    score = ev_sub.add_parser("cc-score", help=cc_score.__doc__, description=cc_score.__doc__)
    score.add_argument("verdicts")
    score.add_argument("--model-id", required=True)
    score.add_argument("--allow-no-wins", action="store_true", help="score a model id that wins no judgement (0%%)")
    score.set_defaults(func=cc_score)
    questions = ev_sub.add_parser("mcq", help=mcq.__doc__, description=mcq.__doc__)
    questions.add_argument("questions", help="JSON/JSONL questions (LiveSports-3K QA, VideoMME, MVBench, OVOBench)")
    questions.add_argument("--video-root", required=True)
    questions.add_argument("--model", required=True)
    questions.add_argument("--out", default=None, help="per-question predictions JSONL")
    questions.add_argument("--device", default=None)
    questions.add_argument("--allow-absolute-paths", action="store_true",
                           help="admit absolute video paths in questions")
    questions.add_argument("--allow-failures", action="store_true", help="exit 0 even when questions failed")
    questions.set_defaults(func=mcq)


def _judge_parser(ev_sub) -> None:
    judge = ev_sub.add_parser("cc-judge", help=cc_judge.__doc__, description=cc_judge.__doc__)
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
    request_limits(judge)
    judge.set_defaults(func=cc_judge)
