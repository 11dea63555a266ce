"""``livecc serve``: many viewers on one streaming engine, in the browser and over an API."""

from .hub import Hub
from .served import HubFull, ServedStream
from .vtt import VttWriter, vtt_text

__all__ = ["Hub", "HubFull", "ServedStream", "VttWriter", "create_app", "vtt_text"]


def __getattr__(name: str):
    # The app needs the `serve` extra (FastAPI); the hub and the WebVTT writer do not.
    if name == "create_app":
        from .app import create_app

        return create_app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
