"""Streaming commentary inference."""

__all__: list[str] = []
