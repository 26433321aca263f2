"""Remember where a GGUF's large string arrays end, so that reading the same file again skips the walk.

Walking a vocabulary item by item (to find where it ends and check that every item is UTF-8) is
most of what reading a header costs: 0.1 to 0.2 s on every load of the default model, whose
49k tokens and 48k merges are read by a Python loop. What a walk found is stored per file path
(with the file's size and modification time) together with a BLAKE2 digest of the array's bytes.
A later read trusts an entry only if those bytes are still there, length prefixes included: an
edited or replaced file is walked again, whatever its timestamps say.

Only arrays of at least MIN_ITEMS items are remembered (real vocabularies, not test fixtures), one
small JSON file per model path under the cache folder. Any problem with the cache is ignored:
it can only save time, never change what the reader accepts.
"""

from __future__ import annotations

import hashlib
import json
import mmap
from pathlib import Path

from clm_local.files import cache_dir, write_text

MIN_ITEMS = 4096
FORMAT = 1


def _digest(data: mmap.mmap, start: int, end: int) -> str:
    with memoryview(data) as view, view[start:end] as region:
        return hashlib.blake2b(region, digest_size=16).hexdigest()


class StringArrayCache:
    """The remembered string arrays of one GGUF file: start offset -> (count, end, distinct)."""

    def __init__(self, path: Path, size: int) -> None:
        self.identity = {"format": FORMAT, "size": size, "mtime_ns": _mtime_ns(path)}
        self.file: Path | None = None
        self.arrays: dict[str, list] = {}
        self.changed = False
        try:
            name = hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:32]
            self.file = cache_dir() / "gguf-strings" / f"{name}.json"
            stored = json.loads(self.file.read_text())
            if all(stored.get(key) == value for key, value in self.identity.items()):
                self.arrays = dict(stored["arrays"])
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            pass

    def lookup(self, data: mmap.mmap, start: int, count: int) -> tuple[int, int] | None:
        """(end, distinct) of the array at `start` if it was walked before and its bytes are unchanged."""
        entry = self.arrays.get(str(start))
        try:
            stored_count, end, distinct, digest = entry  # type: ignore[misc]
            if stored_count == count and start <= end <= len(data) and _digest(data, start, end) == digest:
                return int(end), int(distinct)
        except (TypeError, ValueError):
            pass
        return None

    def remember(self, data: mmap.mmap, start: int, count: int, end: int, distinct: int) -> None:
        if count >= MIN_ITEMS:
            self.arrays[str(start)] = [count, end, distinct, _digest(data, start, end)]
            self.changed = True

    def save(self) -> None:
        """Write the entries if a walk added one (a temporary file renamed, so readers see whole files)."""
        if not self.changed or self.file is None:
            return
        try:
            self.file.parent.mkdir(parents=True, exist_ok=True)
            write_text(self.file, json.dumps({**self.identity, "arrays": self.arrays}))
        except OSError:
            pass


def _mtime_ns(path: Path) -> int:
    try:
        return path.stat().st_mtime_ns
    except OSError:
        return -1
