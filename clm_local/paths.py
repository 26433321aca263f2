"""Where clm-local keeps what it fetches and builds: one cache folder, never the repository.

`CLM_LOCAL_CACHE` overrides the location; otherwise `$XDG_CACHE_HOME/clm-local` or
`~/.cache/clm-local`.
"""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """The root of clm-local's cache (created on demand)."""
    explicit = os.environ.get("CLM_LOCAL_CACHE")
    if explicit:
        root = Path(explicit)
    else:
        root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "clm-local"
    root.mkdir(parents=True, exist_ok=True)
    return root
