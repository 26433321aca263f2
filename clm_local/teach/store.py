"""The preference file: one JSON line per labelled pair, appended durably, never rewritten.

Why these rules:
- A person's choice took them time; once the server said "saved" (201), a crash, a power cut or
  a SIGKILL must not lose it: each append is one write of the whole line, then fsync, before the
  answer. A folder entry for a new file is synced too.
- The file is the user's data: clm-local never truncates, rewrites or reorders it. A line that
  cannot be used (a torn last line after a crash, a line another program wrote wrong) is reported
  with its number and skipped for training, and stays in the file.
- Other processes may append too (a second server on the same data folder, `echo >> file`):
  appends take an exclusive `flock` on the file and start on a fresh line (a torn last line gets
  its newline first), reads take a shared one, and every line is validated when read.

The lines are the JSONL `clm-local train` reads (`prompt`, `chosen`, `rejected`), plus `time`
(ISO-8601 UTC), `model` (the file name of the model that was served) and `base` (the base id,
identity.py): pairs judged on another base are not training data for this one.
"""

from __future__ import annotations

import datetime
import errno
import json
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from clm_local.files import fsync_folder
from clm_local.teach.identity import same_base
from clm_local.training.data import BadRecord, record_turns

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: threads of one server are still serialised
    fcntl = None  # type: ignore[assignment]

FIELDS = ("prompt", "chosen", "rejected")
# Each text at most this many characters: far beyond an answer the page generates (a few hundred
# tokens), and it bounds one line (3 x 32,000 x up to 6 bytes of escapes) well under the server's
# 1 MiB body limit. Training cuts long pairs to its max_length anyway.
MAX_CHARS = 32_000
MAX_REPORTED_BAD_LINES = 20  # a file of garbage reports the first few, and counts all
FULL_DISK_ERRORS = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}


class PairError(ValueError):
    """A pair the API refuses; `param` names the field."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(message)
        self.param = param


class StorageError(OSError):
    """The pair could not be written; `full` when the disk (or quota) is full."""

    def __init__(self, message: str, *, full: bool) -> None:
        super().__init__(message)
        self.full = full


def check_pair(body: dict[str, Any]) -> dict[str, str]:
    """The prompt, chosen and rejected texts of an API body, or PairError naming the field.

    Other fields are ignored (as the OpenAI routes ignore fields they do not read), so a page
    may send what it likes beside the three texts without breaking on a later version.
    """
    pair = {}
    for name in FIELDS:
        value = body.get(name)
        if value is None:
            raise PairError(name, f"'{name}' is required")
        if not isinstance(value, str):
            raise PairError(name, f"'{name}' must be a string, got {type(value).__name__}")
        if not value.strip():
            raise PairError(name, f"'{name}' is empty")
        if len(value) > MAX_CHARS:
            raise PairError(name, f"'{name}' has {len(value)} characters; at most {MAX_CHARS} are kept")
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as error:
            raise PairError(
                name, f"'{name}' is not valid Unicode text (a lone surrogate at character {error.start})"
            ) from None
        pair[name] = value
    if pair["chosen"] == pair["rejected"]:
        raise PairError(
            "rejected", "'chosen' and 'rejected' are the same text: a preference needs two answers"
        )
    return pair


def record_problem(record: object) -> str | None:
    """Why a parsed line cannot be a training pair (None: it can). The training's own rules
    (training/data.py), plus what makes a pair useless: an empty text, two equal answers."""
    try:
        prompt, (chosen, rejected) = record_turns(record, "dpo")
    except BadRecord as error:
        return str(error)
    for name, turn in (("prompt", prompt), ("chosen", chosen), ("rejected", rejected)):
        if isinstance(turn, str) and not turn.strip():
            return f"field '{name}' is empty"
    if chosen == rejected:
        return "'chosen' and 'rejected' are the same"
    base = record.get("base")  # type: ignore[union-attr]
    if base is not None and not isinstance(base, str):
        return "field 'base' must be a string"
    return None


@dataclass
class Scan:
    """What the file holds: pairs usable for this base, pairs of other bases, bad lines."""

    usable: int = 0
    other_base: int = 0
    other_bases: set[str] = field(default_factory=set)
    bad: list[tuple[int, str]] = field(default_factory=list)  # (line number, reason), the first few
    bad_count: int = 0

    def add_bad(self, number: int, reason: str) -> None:
        self.bad_count += 1
        if len(self.bad) < MAX_REPORTED_BAD_LINES:
            self.bad.append((number, reason))


@dataclass
class _Consumed:
    """The scan of the file's complete lines up to `offset` (a cache: appends scan only what is new)."""

    inode: int
    offset: int
    lines: int
    scan: Scan


class PreferenceStore:
    """The preference file of one base. Thread-safe; other processes are kept out by flock."""

    def __init__(self, path: Path, base_id: str) -> None:
        self.path = path
        self.base_id = base_id
        self._lock = threading.Lock()
        self._consumed: _Consumed | None = None

    def append(self, pair: dict[str, str], *, model: str) -> Scan:
        """Write one validated pair (check_pair's) and fsync it; the file's scan afterwards.
        StorageError when it cannot be written (the file keeps every earlier line)."""
        record = {
            **pair,
            "time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "model": model,
            "base": self.base_id,
        }
        line = json_line(record)
        with self._lock:
            created = not self.path.exists()
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                descriptor = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
            except OSError as error:
                raise _storage_error(error, self.path) from None
            try:
                _lock(descriptor, exclusive=True)
                size = os.fstat(descriptor).st_size
                torn = size > 0 and os.pread(descriptor, 1, size - 1) != b"\n"
                data = (b"\n" if torn else b"") + line
                written = 0
                while written < len(data):  # os.write may write less than asked
                    written += os.write(descriptor, data[written:])
                os.fsync(descriptor)
            except OSError as error:
                raise _storage_error(error, self.path) from None
            finally:
                os.close(descriptor)  # also releases the flock
            if created:
                fsync_folder(self.path.parent)
            return self._scan_locked()

    def scan(self) -> Scan:
        """Counts of the file now (reads only what was appended since the last scan)."""
        with self._lock:
            return self._scan_locked()

    def read(self) -> tuple[list[tuple[int, dict]], Scan]:
        """Every usable pair for this base, with its line number, and the whole file's scan."""
        pairs: list[tuple[int, dict]] = []
        scan = Scan()
        with self._lock:
            data, _ = self._read_from(0)
        *complete, tail = data.split(b"\n")
        for number, raw in enumerate(complete, start=1):
            self._judge(number, raw, scan, pairs)
        if tail.strip():
            self._judge(len(complete) + 1, tail, scan, pairs, last=True)
        return pairs, scan

    # -- internals --------------------------------------------------------------------------------

    def _scan_locked(self) -> Scan:
        try:
            inode = self.path.stat().st_ino
        except FileNotFoundError:
            self._consumed = None
            return Scan()
        except OSError as error:
            raise _storage_error(error, self.path) from None
        consumed = self._consumed
        if consumed is None or consumed.inode != inode:
            consumed = _Consumed(inode, 0, 0, Scan())
        data, size = self._read_from(consumed.offset)
        if size < consumed.offset:  # the file was cut by someone else: start over
            consumed = _Consumed(inode, 0, 0, Scan())
            data, size = self._read_from(0)
        end = data.rfind(b"\n") + 1  # complete lines only; a tail may still be being written
        for raw in data[:end].split(b"\n")[:-1]:
            consumed.lines += 1
            self._judge(consumed.lines, raw, consumed.scan, None)
        consumed.offset += end
        self._consumed = consumed
        result = Scan(
            consumed.scan.usable, consumed.scan.other_base, set(consumed.scan.other_bases),
            list(consumed.scan.bad), consumed.scan.bad_count,
        )  # fmt: skip
        tail = data[end:]
        if tail.strip():  # a last line without its newline: counted if whole, reported if torn
            self._judge(consumed.lines + 1, tail, result, None, last=True)
        return result

    def _read_from(self, offset: int) -> tuple[bytes, int]:
        """The file's bytes from `offset`, under a shared flock (no half-written append), and its size."""
        try:
            with self.path.open("rb") as handle:
                _lock(handle.fileno(), exclusive=False)
                size = os.fstat(handle.fileno()).st_size
                if size < offset:
                    return b"", size
                handle.seek(offset)
                return handle.read(), size
        except FileNotFoundError:
            return b"", 0
        except OSError as error:
            raise _storage_error(error, self.path) from None

    def _judge(
        self, number: int, raw: bytes, scan: Scan, pairs: list[tuple[int, dict]] | None, last: bool = False
    ) -> None:
        if not raw.strip():
            return
        torn = " (the last line, cut short: a crash while it was written?)" if last else ""
        try:
            record = json.loads(raw.decode("utf-8"))
        except UnicodeDecodeError:
            scan.add_bad(number, "not UTF-8 text" + torn)
            return
        except ValueError as error:
            scan.add_bad(number, f"not valid JSON ({getattr(error, 'msg', error)})" + torn)
            return
        problem = record_problem(record)
        if problem is not None:
            scan.add_bad(number, problem)
            return
        base = record.get("base")
        if base is not None and not same_base(base, self.base_id):
            scan.other_base += 1
            scan.other_bases.add(base)
            return
        scan.usable += 1
        if pairs is not None:
            pairs.append((number, record))


def json_line(record: dict) -> bytes:
    """One JSONL line, UTF-8 as written (readable in any editor), with the three characters that
    Python's str.splitlines() would break a line at escaped, so no reader splits a record."""
    text = json.dumps(record, ensure_ascii=False)
    for char in ("\u2028", "\u2029", "\x85"):
        text = text.replace(char, f"\\u{ord(char):04x}")
    return (text + "\n").encode("utf-8")


def _lock(descriptor: int, *, exclusive: bool) -> None:
    if fcntl is not None:
        fcntl.flock(descriptor, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)


def _storage_error(error: OSError, path: Path) -> StorageError:
    full = error.errno in FULL_DISK_ERRORS
    what = "the disk is full" if full else (error.strerror or str(error))
    return StorageError(f"cannot write {path}: {what}; the pair was not saved", full=full)
