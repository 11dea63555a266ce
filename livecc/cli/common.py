"""What several commands share: the model option's help, a stream's settings as flags, the kernels
compiled while a model loads, the exit code of a batch job, and the limits of requests to a chat
endpoint."""

from __future__ import annotations

import argparse
import sys

__all__ = ["MODEL_HELP", "chat_client", "compile_while_loading", "failures_exit", "request_limits", "session_config",
           "session_flags"]

MODEL_HELP = "local Qwen2-VL, Qwen2.5-VL or Qwen3-VL checkpoint directory, or 'tiny' / 'tiny:qwen3_vl' (random)"
SESSION_FLAGS = ("max_new_tokens", "repetition_penalty", "horizon", "min_pixels", "max_pixels")


def session_flags(parser: argparse.ArgumentParser) -> None:
    """Flags that override a stream's settings; unset ones come from the checkpoint or SessionConfig."""
    from ..infer import SessionConfig

    d = SessionConfig()
    parser.add_argument("--max-new-tokens", type=int, default=None, help=f"per window (default {d.max_new_tokens})")
    parser.add_argument("--repetition-penalty", type=float, default=None, help=f"default {d.repetition_penalty}")
    parser.add_argument("--horizon", type=float, default=None,
                        help=f"seconds of video kept in the KV cache (default {d.horizon:g})")
    parser.add_argument("--min-pixels", type=int, default=None, help="pixels per frame at least (default: the "
                        f"checkpoint's, else {d.min_pixels})")
    parser.add_argument("--max-pixels", type=int, default=None, help="pixels per frame at most (default: the "
                        f"checkpoint's, else {d.max_pixels})")


def compile_while_loading(path: str, device: str | None) -> None:
    """On a GPU, the kernels of the windows of the model at ``path`` start compiling in parallel
    processes (from its config) while its weights load; the engine's warm-up waits for them."""
    from ..infer.cache import PAGE_SIZE
    from ..infer.runner import window_launches
    from ..kernels import aot
    from ..models import model_config, placement

    device, dtype = placement(device)
    if device.startswith("cuda"):
        aot.compile_ahead(window_launches(model_config(path), dtype, PAGE_SIZE, device), background=True)


def session_options(args) -> dict:
    """The streaming settings the command line sets."""
    return {k: getattr(args, k) for k in SESSION_FLAGS if getattr(args, k, None) is not None}


def session_config(model, args, **more):
    """The model's own streaming settings (as it was trained: window plan, pixel bounds), with
    what the command line sets."""
    from ..infer import SessionConfig

    return SessionConfig.for_model(model, **session_options(args), **more)


def failures_exit(command: str, failed: int, allow: bool, where: str) -> int:
    """The exit code of a batch job: 3 when items failed (they are listed in ``where``) unless allowed."""
    if failed and not allow:
        print(f"livecc {command}: {failed} items failed (see {where}); --allow-failures accepts that",
              file=sys.stderr)
        return 3
    return 0


def request_limits(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for one answer")
    parser.add_argument("--max-retries", type=int, default=4, help="retries of a failed request (said on stderr)")
    parser.add_argument("--deadline", type=float, default=300.0,
                        help="seconds one request may take over all its retries")


def chat_client(args, model: str):
    """The client of ``model`` at the OpenAI-compatible endpoint a command's options describe."""
    from ..chat import ChatClient

    return ChatClient(args.base_url, model, args.api_key,
                      azure_api_version=args.azure_api_version, requests_per_second=args.rps, timeout=args.timeout,
                      max_retries=args.max_retries, deadline=args.deadline)
