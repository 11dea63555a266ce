"""Packed streaming training."""

__all__: list[str] = []
