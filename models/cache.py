"""Where Edge Toolkit keeps what it derives once (dequantized models, cleaned text)."""

from __future__ import annotations

import os
from pathlib import Path


def toolkit_cache_dir() -> Path:
    """`$EDGE_TOOLKIT_CACHE` if set, else `~/.cache/edge-toolkit`."""
    env = os.environ.get("EDGE_TOOLKIT_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "edge-toolkit"
