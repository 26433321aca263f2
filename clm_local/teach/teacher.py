"""What the server's teach routes call: pairs in, a training run, the list of dials, a switch.

The teacher knows the served model's base (identity.py) and that base's folder; it never touches
a llama.cpp model. Switching the served model is the server's business: it hands the teacher a
`switch(path)` that loads a GGUF and serves it from then on (ClmError if it does not load, the
old model serving on). Every method may block on disk or on a load, so the server calls them
from worker threads, never from its event loop.

Errors are TeachError with a `kind` the HTTP side maps to a status: invalid (400), conflict
(409), not_found (404), storage_full (507), storage (500), load_failed (500).
"""

from __future__ import annotations

import dataclasses
import shutil
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from clm_local.errors import ClmError
from clm_local.files import write_json
from clm_local.runtime.threads import usable_cores
from clm_local.teach.dials import Dial, DialRegistry, check_name, dial_from_report, new_name
from clm_local.teach.folders import BaseFolder
from clm_local.teach.identity import BaseIdentity, HashCache, base_folder, identify, locate_base, slug
from clm_local.teach.runner import NothingRuns, Runner, RunnerBusy
from clm_local.teach.settings import TeachSettings, plan, split
from clm_local.teach.store import (
    FIELDS,
    PairError,
    PreferenceStore,
    Scan,
    StorageError,
    check_pair,
    json_line,
)

Switch = Callable[[Path], None]


class TeachError(ClmError):
    """A refused teach request: `kind` says which (module docstring), `param` which field."""

    def __init__(self, kind: str, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.param = param


class Teacher:
    """Preferences, training and dials for the base of the model a server was started with."""

    def __init__(
        self,
        data_dir: Path,
        served: Path,
        switch: Switch,
        settings: TeachSettings | None = None,
        threads: int | None = None,
    ) -> None:
        self.data_dir = Path(data_dir).expanduser()
        self.original = Path(served).resolve()
        self.served = self.original
        self.settings = (settings or TeachSettings()).check()
        self.threads = threads or max(1, usable_cores() - 1)  # leave the server a core
        self._switch = switch
        self.hashes = HashCache(self.data_dir / "hashes.json")
        self.runner = Runner()
        self._identity: BaseIdentity | None = None
        self._identity_lock = threading.Lock()
        self._start_lock = threading.Lock()
        self._switch_lock = threading.Lock()
        self._active: str | None = None

    # -- what the base is, where its files are -----------------------------------------------------

    def prepare(self) -> BaseIdentity:
        """Identify the base (hashing a plain GGUF once) and find which dial, if any, is served."""
        with self._identity_lock:
            if self._identity is None:
                identity = identify(self.original, self.hashes)
                self.folder = BaseFolder(base_folder(self.data_dir, identity))
                identity = dataclasses.replace(identity, id=self.folder.root.name)
                self.store = PreferenceStore(self.folder.preferences, identity.id)
                self.registry = DialRegistry(self.folder)
                started_on = self.registry.of_file(self.original)
                self._active = started_on.name if started_on else None
                self._identity = identity
            return self._identity

    @property
    def identity(self) -> BaseIdentity:
        return self.prepare()

    # -- preferences -------------------------------------------------------------------------------

    def preferences(self) -> dict[str, Any]:
        identity = self.identity
        scan = self._scan(self.store.scan)
        return {
            "count": scan.usable,
            "needed": self.settings.needed,
            "path": str(self.folder.preferences),
            "base": identity.id,
            "other_base": scan.other_base,
            "bad_lines": [{"line": number, "reason": reason} for number, reason in scan.bad],
        }

    def add_pair(self, body: dict[str, Any]) -> dict[str, Any]:
        """Validate and append one pair; returns only after it is on disk."""
        try:
            pair = check_pair(body)
        except PairError as error:
            raise TeachError("invalid", str(error), param=error.param) from None
        self.prepare()
        scan = self._scan(lambda: self.store.append(pair, model=self.served.name))
        return {"count": scan.usable, "needed": self.settings.needed}

    def _scan(self, read: Callable[[], Scan]) -> Scan:
        try:
            return read()
        except StorageError as error:
            raise TeachError("storage_full" if error.full else "storage", str(error)) from None

    # -- training ----------------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        return self.runner.status()

    def start_training(self, body: dict[str, Any]) -> dict[str, Any]:
        """Check the pairs and the base, write the run's files, start the process; the status."""
        with self._start_lock:
            identity = self.prepare()
            if self.runner.busy:
                raise TeachError(
                    "conflict", "a training job is running; cancel it first (DELETE /v1/clm/train)"
                )
            name = self._dial_name(body.get("name"))
            if identity.untrainable:
                raise TeachError("invalid", identity.untrainable)
            pairs, scan = self.store.read() if self.folder.preferences.exists() else ([], Scan())
            self._check_enough(len(pairs), scan, identity)
            try:
                base = locate_base(identity, self.original, self.folder.base_record, self.hashes)
            except ClmError as error:
                raise TeachError("invalid", str(error)) from None
            records = [{field: record[field] for field in FIELDS} for _, record in pairs]
            steps = plan(len(records), self.settings)
            train, held_out = split(records, steps.held_out_pairs)
            dial_dir = self.folder.dial(name)
            try:
                dial_dir.mkdir(parents=True, exist_ok=False)  # a new folder: nothing old is overwritten
                spec = self._write_spec(dial_dir, name, base, identity, train, held_out)
            except FileExistsError:
                raise TeachError(
                    "conflict", f"a dial named {name!r} exists; choose another name", "name"
                ) from None
            except OSError as error:
                shutil.rmtree(dial_dir, ignore_errors=True)
                raise TeachError(
                    "storage", f"cannot write the training files in {dial_dir}: {error}"
                ) from None
            try:
                return self.runner.start(
                    spec,
                    self.folder.log,
                    dial=name,
                    steps=steps.sft_steps + steps.dpo_steps,
                    finished=self._finished,
                    cleanup=lambda: shutil.rmtree(dial_dir, ignore_errors=True),
                )
            except RunnerBusy as error:
                shutil.rmtree(dial_dir, ignore_errors=True)
                raise TeachError("conflict", str(error)) from None
            except ClmError as error:
                shutil.rmtree(dial_dir, ignore_errors=True)
                raise TeachError("storage", str(error)) from None

    def cancel(self) -> dict[str, Any]:
        try:
            return self.runner.cancel()
        except (NothingRuns, RunnerBusy) as error:
            raise TeachError("conflict", str(error)) from None

    def shutdown(self) -> None:
        self.runner.shutdown()

    def _dial_name(self, given: Any) -> str:
        if given is None:
            name = new_name()
            taken = {d.name for d in self.registry.list()}
            suffix = 1
            while name in taken or self.folder.dial(name).exists():
                suffix += 1
                name = f"{new_name()}-{suffix}"
            return name
        try:
            name = check_name(given)
        except ClmError as error:
            raise TeachError("invalid", str(error), "name") from None
        if self.registry.get(name) is not None or self.folder.dial(name).exists():
            raise TeachError("conflict", f"a dial named {name!r} exists; choose another name", "name")
        return name

    def _check_enough(self, count: int, scan: Scan, identity: BaseIdentity) -> None:
        needed = self.settings.needed
        if count >= needed:
            return
        if scan.other_base and count == 0:
            others = ", ".join(sorted(scan.other_bases))
            raise TeachError(
                "invalid",
                f"the {scan.other_base} pairs in {self.folder.preferences} were sampled from a different "
                f"base ({others}) than the served model's ({identity.id}); label pairs on this model to "
                "train it",
            )
        extra = []
        if scan.other_base:
            extra.append(f"{scan.other_base} more are of another base")
        if scan.bad_count:
            extra.append(f"{scan.bad_count} lines cannot be used")
        note = f" ({'; '.join(extra)})" if extra else ""
        raise TeachError("invalid", f"{count} pairs collected, training needs at least {needed}{note}")

    def _write_spec(
        self,
        dial_dir: Path,
        name: str,
        base: Path,
        identity: BaseIdentity,
        train: list[dict],
        held_out: list[dict],
    ) -> Path:
        for file_name, records in (("train.jsonl", train), ("held_out.jsonl", held_out)):
            (dial_dir / file_name).write_bytes(b"".join(json_line(r) for r in records))
        spec = {
            "name": name,
            "base": str(base),
            "base_id": identity.id,
            "folder": str(self.folder.root),
            "dial_dir": str(dial_dir),
            "train": str(dial_dir / "train.jsonl"),
            "held_out": str(dial_dir / "held_out.jsonl"),
            "gguf": f"{slug(identity.name)}-{name}.gguf",
            "model_name": f"{identity.name} + CLM {name}",
            "settings": vars(self.settings),
            "threads": self.threads,
            "lock": str(self.folder.lock),
        }
        path = dial_dir / "spec.json"
        write_json(path, spec)
        return path

    def _finished(self, report: dict[str, Any]) -> str:
        """The runner's callback when a run ends with a report: load it, list it, say so."""
        dial = dial_from_report(report)
        gguf = self.folder.root / dial.file
        with self._switch_lock:
            try:
                self._switch(gguf)
            except ClmError as error:
                raise ClmError(
                    f"trained and converted to {gguf}, but it did not load ({error}); "
                    "the old model keeps serving"
                ) from None
            self.served, self._active = gguf.resolve(), dial.name
        message = f"{dial.name} trained on {dial.train.get('pairs')} pairs and now served; "
        message += _held_out_words(dial)
        try:
            self.registry.add(dial)
        except OSError as error:  # served all the same; report.json beside its GGUF describes it
            return f"{message}; it could not be added to {self.folder.registry} ({error.strerror or error})"
        return message

    # -- dials ---------------------------------------------------------------------------------------

    def dials(self) -> dict[str, Any]:
        self.prepare()
        return {"active": self._active, "dials": [d.public(self.folder) for d in self.registry.list()]}

    def activate(self, name: Any) -> dict[str, Any]:
        """Serve the dial `name`, or (None) the model the server started with."""
        self.prepare()
        if name is not None and not isinstance(name, str):
            raise TeachError(
                "invalid", "'name' must be a dial's name, or null for the model served at start", "name"
            )
        dial: Dial | None = None
        if name is None:
            target = self.original
        else:
            dial = self.registry.get(name)
            if dial is None:
                raise TeachError("not_found", f"no dial named {name!r}", "name")
            target = (self.folder.root / dial.file).resolve()
            if not target.is_file():
                raise TeachError("not_found", f"the file of dial {name!r} is gone ({target})", "name")
        if not self._switch_lock.acquire(blocking=False):
            raise TeachError("conflict", "another model is being loaded; try again when it is served")
        try:
            if target != self.served:
                try:
                    self._switch(target)
                except ClmError as error:
                    raise TeachError("load_failed", f"{error}; the old model keeps serving") from None
            self.served = target
            self._active = name if dial is not None else self.registry_name_of_original()
        finally:
            self._switch_lock.release()
        return {"active": self._active}

    def registry_name_of_original(self) -> str | None:
        started_on = self.registry.of_file(self.original)
        return started_on.name if started_on else None


def _held_out_words(dial: Dial) -> str:
    accuracy, pairs = dial.held_out.get("reward_accuracy"), dial.held_out.get("pairs")
    if accuracy is None:
        return "no held-out numbers"
    return f"held-out reward accuracy {accuracy:.2f} on {pairs} pairs never trained on"
