"""``livecc train``: every config key typed, listed in its help with its default."""

from __future__ import annotations

import argparse
import os
import sys

__all__ = ["add_parser", "run"]


def run(args) -> int:
    """Train with the streaming objective (torchrun for several GPUs or machines). A rerun in the
    same output_dir continues from its latest complete checkpoint."""
    from ..train import load_config, train

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


def add_parser(sub) -> None:
    from ..train.config import describe_config

    tr = sub.add_parser("train", help=run.__doc__, description=run.__doc__,
                        epilog="config keys (type = default):\n" + describe_config(),
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    tr.add_argument("--config", default=None, help="JSON or YAML config (see configs/)")
    tr.add_argument("--resume", default=None, help="continue from this checkpoint directory (default: the latest "
                                                   "complete one in output_dir)")
    tr.add_argument("--restart", action="store_true", help="remove output_dir's checkpoints, metrics and rejects "
                                                          "and start at step 0")
    tr.add_argument("overrides", nargs="*", help="key=value overrides, values in JSON (lr=1e-5 max_steps=10)")
    tr.set_defaults(func=run)
