"""``livecc demo``."""

from __future__ import annotations

__all__ = ["add_parser", "run"]


def run(args) -> int:
    """Synthesize commentated clips, train a tiny model on them, stream held-out clips, and score."""
    from ..demo import DemoConfig, run_demo

    run_demo(DemoConfig(out=args.out, train_clips=args.train_clips, test_clips=args.test_clips,
                        duration=args.duration, steps=args.steps, seed=args.seed, realtime=not args.fast,
                        arch=args.arch))
    return 0


def add_parser(sub) -> None:
    demo = sub.add_parser("demo", help=run.__doc__, description=run.__doc__)
    demo.add_argument("--out", default="demo_out", help="directory for clips, records and the checkpoint")
    demo.add_argument("--train-clips", type=int, default=96)
    demo.add_argument("--test-clips", type=int, default=6)
    demo.add_argument("--duration", type=float, default=12.0, help="clip length in seconds")
    demo.add_argument("--steps", type=int, default=None, help="training steps (default: the architecture's)")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--fast", action="store_true", help="stream held-out clips as fast as possible")
    demo.add_argument("--arch", choices=("qwen2_vl", "qwen3_vl"), default="qwen2_vl",
                      help="the tiny model's architecture")
    demo.set_defaults(func=run)
