"""The model being served now, and switching to another file without a restart.

A switch builds a second Scheduler (its own thread, its own llama.cpp model) for the new file,
with the first one's settings, and waits until it has loaded: all of it off the event loop, in
the caller's worker thread. Only then do new requests go to it (one reference replaced). The old
scheduler refuses new jobs, answers the ones it holds to the end, then frees its model in a
thread of its own ("retiring"). Should the new file not load, nothing changes and the caller
hears why.

A handler reads `serving.scheduler` once and submits to it at once; should a switch slip in
between, the old one refuses (QueueFull, "being replaced") and the handler submits to the new
one (`submit`). Both models are in memory for as long as the old one's last answer takes.

/metrics counts over every model served since the start (retired ones included), so its
counters never go backwards at a switch.
"""

from __future__ import annotations

import dataclasses
import threading
from pathlib import Path

from clm_local.server.openai_api import Defaults
from clm_local.server.scheduler import Job, Metrics, QueueFull, Scheduler

# Metrics fields that are running maxima rather than sums (the others add up across models).
MAXIMA = ("max_forward_passes_per_step", "max_sequences_per_step", "max_slots_per_step")


class Serving:
    """Holds the current scheduler; `switch` replaces it (thread-safe)."""

    def __init__(self, scheduler: Scheduler, default_mode: str | None = None) -> None:
        self.default_mode = default_mode
        self.scheduler = scheduler
        self.defaults = self._defaults_of(scheduler)
        self._switching = threading.Lock()
        self._lock = threading.Lock()
        self._retiring: list[Scheduler] = []
        self._retired = Metrics()

    @property
    def model_path(self) -> Path:
        return self.scheduler.model_path

    def _defaults_of(self, scheduler: Scheduler) -> Defaults:
        info = scheduler.info
        return Defaults(
            alpha=info.alpha_default,
            mode=self.default_mode or info.mix_default,
            n_ctx=scheduler.n_ctx,
            model_id=Path(info.path).name.removesuffix(".gguf"),
        )

    def submit(self, job: Job) -> Scheduler:
        """Queue the job on the current model; the scheduler that took it. QueueFull as Scheduler's."""
        scheduler = self.scheduler
        try:
            scheduler.submit(job)
        except QueueFull:
            if self.scheduler is scheduler:
                raise
            scheduler = self.scheduler  # switched meanwhile: the new model takes it
            scheduler.submit(job)
        return scheduler

    def switch(self, path: str | Path) -> None:
        """Load `path` with the current settings and serve it from now on; blocks until loaded.
        ClmError when it cannot be loaded: the current model serves on."""
        with self._switching:
            current = self.scheduler
            new = current.for_model(path)
            new.start()  # raises ClmError when the model does not load
            with self._lock:
                self._retiring.append(current)
                self.defaults = self._defaults_of(new)
                self.scheduler = new
            threading.Thread(target=self._retire, args=(current,), name="clm-retire", daemon=True).start()

    def _retire(self, scheduler: Scheduler) -> None:
        scheduler.drain()
        with self._lock:
            if scheduler in self._retiring:
                self._retiring.remove(scheduler)
                self._retired = _sum(self._retired, scheduler.metrics)

    def metrics(self) -> Metrics:
        """Counters over every model served since the start."""
        with self._lock:
            total = self._retired
            for scheduler in [*self._retiring, self.scheduler]:
                total = _sum(total, scheduler.metrics)
            return total

    def stop(self) -> None:
        """Stop the current model and any still retiring (what they hold is answered with 503)."""
        with self._lock:
            schedulers = [*self._retiring, self.scheduler]
        for scheduler in schedulers:
            scheduler.stop()


def _sum(a: Metrics, b: Metrics) -> Metrics:
    values = {}
    for field in dataclasses.fields(Metrics):
        x, y = getattr(a, field.name), getattr(b, field.name)
        values[field.name] = max(x, y) if field.name in MAXIMA else x + y
    return Metrics(**values)
