"""Where alignkit keeps its cache (the testbed model, reference log-probs, model-call caches)."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """The cache root: ``$ALIGNKIT_CACHE`` if set, else ``~/.cache/alignkit``."""
    root = os.environ.get("ALIGNKIT_CACHE")
    path = Path(root).expanduser() if root else Path.home() / ".cache" / "alignkit"
    path.mkdir(parents=True, exist_ok=True)
    return path
