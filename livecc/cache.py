"""Where livecc keeps what it computes once per machine (the attention dispatcher's choices, the
offline processors, the Hopper gate's kernel resources): ``$LIVECC_CACHE``, by default
``~/.cache/livecc``."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["cache_root"]


def cache_root() -> Path:
    return Path(os.environ.get("LIVECC_CACHE") or Path.home() / ".cache" / "livecc")
