"""Where livecc keeps what it computes once per machine (the attention dispatcher's choices, the
offline processors, the Hopper gate's kernel resources): ``$LIVECC_CACHE``, by default
``~/.cache/livecc``; and the one way a device's name becomes part of a file name."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["cache_root", "file_label"]


def cache_root() -> Path:
    return Path(os.environ.get("LIVECC_CACHE") or Path.home() / ".cache" / "livecc")


def file_label(name: str) -> str:
    """``name`` (a device's, say) as part of a file name: ``"NVIDIA H200"`` -> ``nvidia-h200``."""
    return "".join(c if c.isalnum() else "-" for c in name.lower()).strip("-")
