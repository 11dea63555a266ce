"""Streaming commentary inference: sessions over bounded, paged KV caches, stepped alone or together."""

from .cache import KVPool, StreamKVCache
from .config import SessionConfig
from .engine import StreamEngine
from .session import StreamingSession, step_streams
from .state import StreamState, WindowResult
from .stream import StreamReport, iter_windows, run_stream, step_through

__all__ = ["KVPool", "SessionConfig", "StreamEngine", "StreamKVCache", "StreamReport", "StreamState",
           "StreamingSession", "WindowResult", "iter_windows", "run_stream", "step_through", "step_streams"]
