"""``livecc serve``: live commentary behind a page and an HTTP/WebSocket API."""

from __future__ import annotations

import sys

from .common import MODEL_HELP, session_config, session_flags

__all__ = ["add_parser", "run"]


def run(args) -> int:
    """Serve live commentary: a page at / and an HTTP API, every stream stepped together on one engine."""
    import uvicorn

    from ..models import load_model
    from ..serve import Hub, create_app
    from ..serve.sources import SourcePolicy

    if args.api_key is not None and not args.api_key:
        print("livecc serve: --api-key '' would let anyone in; give a key, or leave the option out", file=sys.stderr)
        return 2
    model, processor = load_model(args.model, args.device)
    config = session_config(model, args)
    hub = Hub(model, processor, max_streams=args.max_streams, config=config, upload_dir=args.upload_dir,
              max_viewers=args.max_viewers, idle_s=args.idle_timeout)
    app = create_app(hub, api_key=args.api_key, max_upload_bytes=args.max_upload_mb << 20,
                     policy=SourcePolicy(allow_private=args.allow_private_sources),
                     allowed_origins=_names(args.allowed_origins), allowed_hosts=_names(args.allowed_hosts))
    key = f"?key={args.api_key}" if args.api_key else ""
    print(f"livecc serve: http://{args.host}:{args.port}/{key} ({args.max_streams} streams at most, uploads in "
          f"{hub.upload_dir}; frames at {config.min_pixels}-{config.max_pixels} pixels, windows of "
          f"{config.plan.initial_frames} then {config.plan.frames_per_window} frames)", flush=True)
    try:
        uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    finally:
        hub.shutdown()
    return 0


def _names(text: str | None) -> tuple[str, ...]:
    return tuple(n.strip() for n in text.split(",") if n.strip()) if text else ()


def add_parser(sub) -> None:
    serve = sub.add_parser("serve", help=run.__doc__, description=run.__doc__)
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
    serve.add_argument("--allowed-hosts", default=None, help="comma-separated names the server answers to in the "
                       "Host header, besides IP addresses and localhost (e.g. livecc.example.org)")
    serve.add_argument("--idle-timeout", type=float, default=30.0,
                       help="seconds a browser stream may send no frame before it is closed (default 30)")
    session_flags(serve)
    serve.add_argument("--device", default=None)
    serve.set_defaults(func=run)
