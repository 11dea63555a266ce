"""``livecc bench``: its options are the benchmarks' own (``livecc bench -h``)."""

from __future__ import annotations

import argparse

__all__ = ["add_parser", "run"]


def run(args) -> int:
    """Run livecc's benchmarks that fit this machine and write their results (see `livecc bench -h`)."""
    from ..bench import main as bench_main

    return bench_main(args.bench_args)


def add_parser(sub) -> None:
    bench = sub.add_parser("bench", help=run.__doc__, description=run.__doc__, add_help=False)
    bench.add_argument("bench_args", nargs=argparse.REMAINDER, help="NAME ... --out DIR (livecc bench -h)")
    bench.set_defaults(func=run)
