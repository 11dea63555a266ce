"""Evaluation: LiveSports-3K commentary and multiple-choice QA."""

__all__: list[str] = []
