"""Files every part of clm-local touches: the cache folder, and file hashes.

The cache holds what clm-local fetches and builds, never the repository. `CLM_LOCAL_CACHE`
overrides its location; otherwise it is `$XDG_CACHE_HOME/clm-local` or `~/.cache/clm-local`.
"""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path
from typing import Any

PROGRESS_MIN_BYTES = 64 * 1024 * 1024  # below this a progress bar would only flicker


def cache_dir() -> Path:
    """The root of clm-local's cache (created on demand)."""
    explicit = os.environ.get("CLM_LOCAL_CACHE")
    if explicit:
        root = Path(explicit)
    else:
        root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "clm-local"
    root.mkdir(parents=True, exist_ok=True)
    return root


def progress_bar(total: int, description: str) -> Any:
    """A byte-counting tqdm bar on stderr, shown only for large totals on a terminal."""
    from tqdm import tqdm  # a dependency of gguf

    hidden = total < PROGRESS_MIN_BYTES
    return tqdm(
        total=total,
        desc=description,
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        file=sys.stderr,
        leave=False,
        disable=True if hidden else None,  # None: tqdm hides itself when stderr is not a terminal
    )


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in chunks so multi-gigabyte weights need no memory."""
    digest = hashlib.sha256()
    with path.open("rb") as handle, progress_bar(path.stat().st_size, f"hashing {path.name}") as bar:
        for chunk in iter(lambda: handle.read(1 << 24), b""):
            digest.update(chunk)
            bar.update(len(chunk))
    return digest.hexdigest()
