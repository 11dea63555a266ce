"""``livecc serve``: live commentary behind a page and an HTTP/WebSocket API."""

from __future__ import annotations

import sys

from .common import MODEL_HELP, compile_while_loading, session_config, session_flags, session_options

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
    if args.replicas is not None:
        return _replicated(args)
    compile_while_loading(args.model, args.device)
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


def _replicated(args) -> int:
    """The page and API in front of ``--replicas`` engines on Ray Serve (``RAY_ADDRESS``: an existing
    cluster's), each stream on one of them."""
    import uvicorn

    from ..serve import create_app
    from ..serve.router import Router, deploy, undeploy
    from ..serve.sources import SourcePolicy

    if args.replicas < 1:
        print(f"livecc serve: --replicas {args.replicas}: give 1 or more", file=sys.stderr)
        return 2
    session = session_options(args)
    gpus = args.replica_gpus if args.replica_gpus is not None else (1.0 if _has_gpu(args.device) else 0.0)
    print(f"livecc serve: starting {args.replicas} engine replicas on Ray Serve ({args.replica_cpus:g} CPUs, "
          f"{gpus:g} GPUs each)", flush=True)
    handles = deploy(args.replicas, args.model, device=args.device, session=session, cpus=args.replica_cpus, gpus=gpus,
                     hub_options=dict(max_streams=args.max_streams, max_viewers=args.max_viewers,
                                      idle_s=args.idle_timeout))
    router = Router(handles, max_viewers=args.max_viewers, upload_dir=args.upload_dir)
    app = create_app(router, api_key=args.api_key, max_upload_bytes=args.max_upload_mb << 20,
                     policy=SourcePolicy(allow_private=args.allow_private_sources),
                     allowed_origins=_names(args.allowed_origins), allowed_hosts=_names(args.allowed_hosts))
    key = f"?key={args.api_key}" if args.api_key else ""
    print(f"livecc serve: http://{args.host}:{args.port}/{key} ({args.replicas} replicas of {args.max_streams} "
          f"streams at most)", flush=True)
    try:
        uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    finally:
        router.shutdown()
        undeploy(args.replicas)
    return 0


def _has_gpu(device: str | None) -> bool:
    import torch

    return (device or "cuda").startswith("cuda") and torch.cuda.is_available()


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
    serve.add_argument("--replicas", type=int, default=None,
                       help="engines on Ray Serve behind this server, each stream on one (--max-streams each; "
                            "RAY_ADDRESS joins an existing cluster; default: one engine in this process, no Ray)")
    serve.add_argument("--replica-cpus", type=float, default=1.0, help="CPUs each replica reserves (default 1)")
    serve.add_argument("--replica-gpus", type=float, default=None,
                       help="GPUs each replica reserves (default: 1 where there is a GPU, else 0)")
    session_flags(serve)
    serve.add_argument("--device", default=None)
    serve.set_defaults(func=run)
