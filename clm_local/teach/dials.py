"""The registry of trained preferences ("dials") of one base: `dials.json`.

Why a registry and not just the folders: the list the page shows must hold only dials whose
model loaded and served; a folder may also be a run that is still going or was cut short.
Why temp file + os.replace: a reader (the server, another server, the user's editor) sees the old
list or the new one, never half of one, even when the machine stops mid-write. Should the file be
lost or damaged anyway, the list is rebuilt from each dial's own report.json (written by the
training process next to its GGUF), so no trained dial is ever forgotten.

Paths inside are relative to the base folder, so the data folder can be moved as a whole.
"""

from __future__ import annotations

import datetime
import json
import re
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from clm_local.errors import ClmError
from clm_local.files import write_json
from clm_local.teach.folders import BaseFolder

FORMAT = "clm-local-dials"
VERSION = 1
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
REPORT_FILE = "report.json"


@dataclass(frozen=True)
class Dial:
    """One trained preference: its GGUF and what it was made from and measured at."""

    name: str
    file: str  # relative to the base folder
    pairs: int  # pairs it was made from: trained on plus held out
    created: str  # ISO-8601 UTC
    held_out: dict[str, Any] = field(default_factory=dict)  # pairs, reward_accuracy, reward_margin, loss
    train: dict[str, Any] = field(default_factory=dict)  # pairs, steps, last reward accuracy and loss

    def public(self, folder: BaseFolder) -> dict[str, Any]:
        """The API's form: the file as an absolute path."""
        return {
            "name": self.name,
            "file": str(folder.root / self.file),
            "pairs": self.pairs,
            "created": self.created,
            "held_out": self.held_out,
            "train": self.train,
        }

    @staticmethod
    def from_json(data: Any) -> Dial:
        if not isinstance(data, dict):
            raise ValueError("a dial must be an object")
        name, file = data.get("name"), data.get("file")
        if not isinstance(name, str) or not NAME.fullmatch(name) or not isinstance(file, str):
            raise ValueError(f"a dial needs a valid name and file, got {name!r}, {file!r}")
        return Dial(
            name=name,
            file=file,
            pairs=int(data.get("pairs") or 0),
            created=str(data.get("created") or ""),
            held_out=dict(data.get("held_out") or {}),
            train=dict(data.get("train") or {}),
        )


def check_name(name: Any) -> str:
    """A dial name as given by a user, or ClmError: it becomes a folder and part of a file name."""
    if not isinstance(name, str) or not NAME.fullmatch(name):
        raise ClmError(
            "'name' must be 1 to 64 letters, digits, '.', '_' or '-', starting with a letter or digit"
        )
    return name


def new_name(now: datetime.datetime | None = None) -> str:
    """A default dial name: `pref-YYYYMMDD-HHMMSS` (UTC), sortable by creation."""
    now = now or datetime.datetime.now(datetime.timezone.utc)
    return now.strftime("pref-%Y%m%d-%H%M%S")


class DialRegistry:
    """dials.json of one base folder; thread-safe within a process."""

    def __init__(self, folder: BaseFolder) -> None:
        self.folder = folder
        self._lock = threading.Lock()

    def list(self) -> list[Dial]:
        with self._lock:
            return self._read()

    def get(self, name: str) -> Dial | None:
        return next((dial for dial in self.list() if dial.name == name), None)

    def of_file(self, path: Path) -> Dial | None:
        """The dial whose GGUF is `path`, if any (a server started on a dial's file)."""
        resolved = path.resolve()
        return next((d for d in self.list() if (self.folder.root / d.file).resolve() == resolved), None)

    def add(self, dial: Dial) -> None:
        """Add (or replace, by name) a dial and write the file atomically."""
        with self._lock:
            dials = [d for d in self._read() if d.name != dial.name] + [dial]
            self._write(dials)

    def _read(self) -> list[Dial]:
        path = self.folder.registry
        if not path.exists():
            return self._from_reports() if self.folder.dials.is_dir() else []
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            if not isinstance(data, dict) or data.get("format") != FORMAT:
                raise ValueError(f"not a {FORMAT} file")
            return [Dial.from_json(entry) for entry in data.get("dials") or []]
        except (OSError, ValueError) as error:
            print(
                f"clm-local: {path} is unreadable ({error}); the dials are listed from their reports",
                file=sys.stderr,
                flush=True,
            )
            return self._from_reports()

    def _from_reports(self) -> list[Dial]:
        """Every dial folder whose report.json and GGUF are there, oldest first."""
        dials = []
        for report_path in sorted(self.folder.dials.glob(f"*/{REPORT_FILE}")):
            try:
                dial = dial_from_report(json.loads(report_path.read_text(encoding="utf-8")))
            except (OSError, ValueError):
                continue
            if (self.folder.root / dial.file).is_file():
                dials.append(dial)
        return sorted(dials, key=lambda d: d.created)

    def _write(self, dials: list[Dial]) -> None:
        path = self.folder.registry
        path.parent.mkdir(parents=True, exist_ok=True)
        data = {"format": FORMAT, "version": VERSION, "dials": [vars(d) for d in dials]}
        write_json(path, data, durable=True)


def dial_from_report(report: Any) -> Dial:
    """The registry entry of a finished run's report.json (job.py writes it)."""
    if not isinstance(report, dict):
        raise ValueError("a report must be an object")
    return Dial.from_json(
        {
            "name": report.get("name"),
            "file": report.get("file"),
            "pairs": report.get("pairs"),
            "created": report.get("created"),
            "held_out": report.get("held_out"),
            "train": report.get("train"),
        }
    )
