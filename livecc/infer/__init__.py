"""Streaming commentary inference: a session per stream over one bounded KV cache."""

from .cache import StreamKVCache
from .session import StreamingSession, WindowResult

__all__ = ["StreamKVCache", "StreamingSession", "WindowResult"]
