"""Streaming commentary inference: sessions over bounded, paged KV caches, stepped alone or together."""

from .cache import KVPool, StreamKVCache
from .session import StreamingSession, WindowResult, step_streams
from .stream import StreamReport, iter_windows, run_stream, step_through

__all__ = ["KVPool", "StreamKVCache", "StreamReport", "StreamingSession", "WindowResult", "iter_windows",
           "run_stream", "step_streams", "step_through"]
