"""Streaming commentary inference: sessions over bounded, paged KV caches, stepped alone or together."""

from .cache import KVPool, StreamKVCache
from .session import StreamingSession, WindowResult, step_streams

__all__ = ["KVPool", "StreamKVCache", "StreamingSession", "WindowResult", "step_streams"]
