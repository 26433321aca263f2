"""The server's side of a training process: start it, follow its progress lines, cancel it.

One job at a time per server: training takes every core but one, and two runs would only halve
each other. The process gets its own process group (session), so cancelling ends it and anything
it started with one signal, and a Ctrl-C meant for the server's terminal does not reach it
directly (the server ends it on the way out instead). A thread reads its stdout, one JSON line at
a time (job.py lists them), and keeps the status the API reports.

When the process reports a finished run, `finished(report)` (the teacher's) loads the new model
while the status says stage "load"; what it returns is the final message, a ClmError it raises
makes the run "failed" with that reason.
"""

from __future__ import annotations

import datetime
import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from clm_local.errors import ClmError

CANCEL_GRACE_SECONDS = 5.0  # SIGTERM first; SIGKILL if the process is still there after this
STATES = ("idle", "running", "done", "failed", "cancelled")


class RunnerBusy(ClmError):
    """A job runs already (or is being loaded, too late to cancel)."""


class NothingRuns(ClmError):
    """Cancel asked while no job runs."""


@dataclass
class Status:
    """GET /v1/clm/train's object."""

    state: str = "idle"
    stage: str | None = None  # sft, dpo, evaluate, convert, load
    step: int = 0
    steps: int = 0
    loss: float | None = None
    reward_accuracy: float | None = None
    eta_seconds: float | None = None
    message: str | None = None
    dial: str | None = None


Finished = Callable[[dict[str, Any]], str]


class Runner:
    """Runs one training process at a time and keeps its status (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._status = Status()
        self._process: subprocess.Popen[str] | None = None
        self._watcher: threading.Thread | None = None
        self._cancelled = False

    @property
    def busy(self) -> bool:
        with self._lock:
            return self._status.state == "running"

    def status(self) -> dict[str, Any]:
        with self._lock:
            return asdict(self._status)

    def start(
        self,
        spec: Path,
        log: Path,
        *,
        dial: str,
        steps: int,
        finished: Finished,
        cleanup: Callable[[], None],
    ) -> dict[str, Any]:
        """Start `python -m clm_local.teach.job SPEC`, its stderr appended to `log`; the status.
        `cleanup` runs when the run ends without a report (failed or cancelled)."""
        with self._lock:
            if self._status.state == "running":
                raise RunnerBusy("a training job is running; cancel it first (DELETE /v1/clm/train)")
            try:
                log.parent.mkdir(parents=True, exist_ok=True)
                with log.open("ab") as header:
                    stamp = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
                    header.write(f"\n=== {stamp} training {dial} ({spec}) ===\n".encode())
                stderr = log.open("ab")
            except OSError as error:
                raise ClmError(f"cannot write {log}: {error.strerror or error}") from None
            try:
                process = subprocess.Popen(
                    [sys.executable, "-m", "clm_local.teach.job", str(spec)],
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.PIPE,
                    stderr=stderr,
                    text=True,
                    encoding="utf-8",
                    start_new_session=True,
                    env=dict(os.environ, PYTHONUNBUFFERED="1"),
                )
            except OSError as error:
                raise ClmError(f"cannot start the training process: {error}") from None
            finally:
                stderr.close()  # the child holds its own copy
            self._process = process
            self._cancelled = False
            self._status = Status(state="running", stage=None, steps=steps, dial=dial, message="starting")
            self._watcher = threading.Thread(
                target=self._watch, args=(process, log, finished, cleanup), name="clm-teach-job", daemon=True
            )
            self._watcher.start()
            return asdict(self._status)

    def cancel(self) -> dict[str, Any]:
        """End the running job (SIGTERM to its group, SIGKILL after a grace); the status once it
        has ended. RunnerBusy when the run is past training (its model is being loaded)."""
        with self._lock:
            if self._status.state != "running" or self._process is None:
                raise NothingRuns("no training job is running")
            if self._status.stage == "load":
                raise RunnerBusy("the trained model is being loaded; it is too late to cancel")
            self._cancelled = True
            process, watcher = self._process, self._watcher
        _signal_group(process, signal.SIGTERM)
        try:
            process.wait(CANCEL_GRACE_SECONDS)
        except subprocess.TimeoutExpired:
            _signal_group(process, signal.SIGKILL)
            process.wait()
        if watcher is not None:
            watcher.join(CANCEL_GRACE_SECONDS)
        return self.status()

    def shutdown(self) -> None:
        """End a running job without waiting for it (the server is going away)."""
        with self._lock:
            process = self._process if self._status.state == "running" else None
            self._cancelled = True
        if process is not None:
            _signal_group(process, signal.SIGKILL)

    # -- the watching thread -----------------------------------------------------------------------

    def _watch(
        self, process: subprocess.Popen[str], log: Path, finished: Finished, cleanup: Callable[[], None]
    ) -> None:
        report: dict[str, Any] | None = None
        failure: str | None = None
        assert process.stdout is not None
        for line in process.stdout:
            try:
                event = json.loads(line)
            except ValueError:
                continue  # not a progress line (none should come; the job sends prints to stderr)
            if not isinstance(event, dict):
                continue
            kind = event.get("event")
            if kind in ("stage", "step"):
                self._update(event)
            elif kind == "done" and isinstance(event.get("report"), dict):
                report = event["report"]
            elif kind == "failed":
                failure = str(event.get("message") or "training failed")
        code = process.wait()
        with self._lock:
            cancelled = self._cancelled
        if cancelled:
            self._end("cancelled", "cancelled; nothing was kept (the preference file is unchanged)")
            cleanup()
            return
        if report is None or code != 0:
            self._end("failed", failure or f"the training process ended with exit status {code} (see {log})")
            cleanup()
            return
        with self._lock:
            self._status.stage, self._status.eta_seconds, self._status.message = "load", None, "loading"
        try:
            message = finished(report)
        except ClmError as error:
            self._end("failed", str(error))
            return
        except Exception as error:  # noqa: BLE001 - whatever happened, the status must not stay "running"
            self._end("failed", f"loading the trained model failed: {type(error).__name__}: {error}")
            return
        self._end("done", message)

    def _update(self, event: dict[str, Any]) -> None:
        with self._lock:
            status = self._status
            stage = str(event.get("stage")) if event.get("stage") else status.stage
            if stage == "dpo" and status.stage == "sft":  # SFT's loss is not DPO's: show none until one
                status.loss = status.reward_accuracy = None
            status.stage = stage
            status.step = int(event.get("step", status.step))
            status.steps = int(event.get("steps", status.steps))
            status.message = None
            if event.get("event") == "step":
                status.loss = _number(event.get("loss"))
                status.reward_accuracy = _number(event.get("reward_accuracy"))
                status.eta_seconds = _number(event.get("eta_seconds"))

    def _end(self, state: str, message: str) -> None:
        with self._lock:
            self._status.state = state
            self._status.message = message
            self._status.eta_seconds = None
            self._process = None


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _signal_group(process: subprocess.Popen[str], sig: signal.Signals) -> None:
    try:
        os.killpg(process.pid, sig)  # start_new_session: its pid is its group's id
    except (ProcessLookupError, PermissionError):
        pass
