"""Which base model the served file is made from, and where that base's GGUF file is.

A pair labelled on one model is training data for P on top of that model's base, and a P only
runs on the exact base it was trained on (the graft checks the base's sha256). So the base's
identity is its sha256:
- a CLM file grafted by clm-local (the default model, every dial) records it: `clm.base.sha256`,
  `clm.base.name`, `clm.base.file`; nothing has to be hashed;
- a plain GGUF is its own base: its sha256 is computed once and kept in `hashes.json`;
- a CLM file converted from a Hugging Face folder records no base file: pairs can be collected
  for it, but it cannot be trained against, and the reason says what to serve instead.

The id, `<file name>-<first 12 hex digits of the sha256>`, names the base's folder and goes
into every pair as `"base"`. The name is the base file's (as the user knows it, not the
`general.name` inside, which is often a training run's name); only the hash identifies, so a
renamed base finds its old folder (`same_base`, `base_folder`).
"""

from __future__ import annotations

import json
import re
import threading
from dataclasses import dataclass
from pathlib import Path

from clm_local.errors import ClmError
from clm_local.files import cache_dir, sha256_file, write_json
from clm_local.gguf.check import check_gguf
from clm_local.gguf.keys import KEY_PRE_LAYER_COUNT, PREFIX_BASE

ID_HASH_CHARS = 12
MAX_SLUG_CHARS = 48


@dataclass(frozen=True)
class BaseIdentity:
    """The base of a served file; `untrainable` says why P cannot be trained for it, if it cannot."""

    id: str
    name: str
    sha256: str | None  # of the base GGUF; None where the served file does not record it
    file: str | None  # the base GGUF's file name as recorded (or the served file's, if it is the base)
    served_is_base: bool
    untrainable: str | None = None  # why P cannot be trained for this model, if it cannot


class HashCache:
    """sha256 of files by (path, size, mtime), kept in a JSON file: hashing a 4 GB GGUF takes
    seconds, and the server asks at every start. A stale or unreadable cache is recomputed."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()

    def sha256(self, file: Path) -> str:
        file = file.resolve()
        stat = file.stat()
        key = str(file)
        with self._lock:
            entries = self._read()
            entry = entries.get(key)
            if isinstance(entry, dict):
                if entry.get("size") == stat.st_size and entry.get("mtime_ns") == stat.st_mtime_ns:
                    digest = entry.get("sha256")
                    if isinstance(digest, str) and re.fullmatch(r"[0-9a-f]{64}", digest):
                        return digest
        digest = sha256_file(file)  # outside the lock: seconds for a large file
        with self._lock:
            entries = self._read()
            entries[key] = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": digest}
            self._write(entries)
        return digest

    def _read(self) -> dict:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def _write(self, entries: dict) -> None:
        if not self.path.parent.is_dir():
            return  # a server that was only started writes nothing: the data folder comes with a pair
        try:
            write_json(self.path, entries)
        except OSError:
            pass  # only a cache: the next start hashes again


def slug(text: str) -> str:
    """A file-name-safe form of a model name."""
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-.") or "model"
    return cleaned[:MAX_SLUG_CHARS]


def identify(served: Path, hashes: HashCache) -> BaseIdentity:
    """The base of the served GGUF (reads its header; hashes it only if it is a plain model)."""
    values = check_gguf(served).values
    if KEY_PRE_LAYER_COUNT not in values:  # a plain model is its own base
        digest = hashes.sha256(served)
        return BaseIdentity(_id(served.stem, digest), served.stem, digest, served.name, served_is_base=True)
    digest = values.get(PREFIX_BASE + "sha256")
    base_file = values.get(PREFIX_BASE + "file")
    base_name = Path(str(base_file)).stem if base_file else str(values.get(PREFIX_BASE + "name") or "base")
    if isinstance(digest, str) and re.fullmatch(r"[0-9a-f]{64}", digest):
        return BaseIdentity(
            _id(base_name, digest), base_name, digest, str(base_file) if base_file else None, False
        )
    name = served.stem
    own = hashes.sha256(served)
    reason = (
        f"{served.name} does not record which base GGUF its pre-layer was trained on (it was converted "
        "from a Hugging Face folder, not grafted by clm-local): serve that base GGUF, or a CLM file "
        "grafted onto it by `clm-local convert`, to train a new preference"
    )
    return BaseIdentity(_id(name, own), name, None, None, False, untrainable=reason)


def _id(name: str, digest: str) -> str:
    return f"{slug(name)}-{digest[:ID_HASH_CHARS]}"


def same_base(a: str, b: str) -> bool:
    """Whether two base ids name the same base: the hash decides, the name is for people."""
    return a.rsplit("-", 1)[-1] == b.rsplit("-", 1)[-1]


def base_folder(data_dir: Path, identity: BaseIdentity) -> Path:
    """The base's folder in the data folder: one of an earlier name with the same hash if there
    is one (the base file was renamed), else one named by the id."""
    suffix = "-" + identity.id.rsplit("-", 1)[-1]
    if data_dir.is_dir():
        for folder in sorted(data_dir.iterdir()):
            if folder.is_dir() and folder.name.endswith(suffix):
                return folder
    return data_dir / identity.id


def locate_base(identity: BaseIdentity, served: Path, record: Path, hashes: HashCache) -> Path:
    """The base GGUF's path, checked by sha256; `record` (base.json) remembers where it was
    found. ClmError, saying where it looked, when the base cannot be found or trained against."""
    if identity.untrainable or identity.sha256 is None:
        raise ClmError(identity.untrainable or "the served model's base is unknown")
    candidates: list[Path] = []
    if identity.served_is_base:
        candidates.append(served)
    try:
        remembered = json.loads(record.read_text(encoding="utf-8")).get("path")
        if isinstance(remembered, str):
            candidates.append(Path(remembered))
    except (OSError, ValueError, AttributeError):
        pass
    if identity.file:
        candidates += [served.parent / identity.file, cache_dir() / "models" / identity.file]
    for candidate in dict.fromkeys(candidates):
        try:
            if candidate.is_file() and hashes.sha256(candidate) == identity.sha256:
                _remember(record, candidate, identity)
                return candidate.resolve()
        except OSError:
            continue
    looked = ", ".join(str(c) for c in dict.fromkeys(candidates)) or "nowhere (no file name recorded)"
    raise ClmError(
        f"cannot find the base model {identity.file or identity.name} (sha256 {identity.sha256[:12]}...) "
        f"that the served model was made from; looked at {looked}: put that GGUF beside the served "
        "file to train"
    )


def _remember(record: Path, base: Path, identity: BaseIdentity) -> None:
    try:
        record.parent.mkdir(parents=True, exist_ok=True)
        write_json(record, {"path": str(base.resolve()), "sha256": identity.sha256, "name": identity.name})
    except OSError:
        pass  # a convenience: the next training looks again
