"""Files every part of clm-local touches: the cache folder, file hashes, and atomic writes.

Every file clm-local writes for someone else to read (a model, a checkpoint, a JSON report, a
preference list's companions) goes through `atomic_file`: written under a temporary name beside
its place and renamed over it only when complete, so a reader sees the old file or the new one,
never half of one, and an interrupted write leaves nothing behind.

The cache holds what clm-local fetches and builds, never the repository. `CLM_LOCAL_CACHE`
overrides its location; otherwise it is `$XDG_CACHE_HOME/clm-local` or `~/.cache/clm-local`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
import shutil
import sys
from collections.abc import Iterator
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


@contextlib.contextmanager
def atomic_file(path: Path, *, durable: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside `path`; when the body returns, rename it over `path`.

    The temporary name is unique (several processes or threads may write the same file; the last
    rename wins) and hidden (`.name.XXXXXXXX.partial`); the body creates it, so it gets the usual
    mode (or the one a copy brings). On any failure, Ctrl-C included, it is removed and `path`
    keeps its old content. durable: fsync the file before the rename and the folder after it,
    for what a power cut must not lose.
    """
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(4)}.partial")
    try:
        yield temporary
        if durable:
            with temporary.open("rb+") as written:
                os.fsync(written.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    if durable:
        fsync_folder(path.parent)


def write_text(path: Path, text: str, *, durable: bool = False) -> None:
    """Write `text` (UTF-8) to `path` through atomic_file."""
    with atomic_file(path, durable=durable) as temporary:
        temporary.write_text(text, encoding="utf-8")


def write_json(path: Path, data: object, *, durable: bool = False) -> None:
    """Write `data` as indented JSON to `path` through atomic_file."""
    write_text(path, json.dumps(data, indent=1, ensure_ascii=False) + "\n", durable=durable)


def copy_atomically(source: Path, target: Path) -> None:
    """Copy `source` (content, mode and times, as shutil.copy2) to `target` through atomic_file."""
    with atomic_file(target) as temporary:
        shutil.copy2(source, temporary)


def fsync_folder(folder: Path) -> None:
    """Make a file created or renamed in `folder` survive a power cut (the entry lives in the
    folder, which is its own inode). A no-op where folders cannot be opened (Windows)."""
    try:
        descriptor = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)
