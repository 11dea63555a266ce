"""The ``livecc`` command line: one entry point, one subcommand per job, each command's options
beside it in a module of its own."""

from __future__ import annotations

import argparse
import logging
import sys
import traceback

from . import bench, data, demo, evaluate, sample, serve, stream, train

__all__ = ["build_parser", "main"]

COMMANDS = (demo, sample, stream, serve, bench, train, evaluate, data)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="livecc", description="LiveCC: video LLMs trained on streaming ASR.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress and backend choices")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        command.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["bench"]:  # its own parser, options and -h included
        return bench.run(argparse.Namespace(bench_args=argv[1:]))
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
