"""The training process: `python -m clm_local.teach.job SPEC.json` (started by runner.py).

Why a process and not a thread of the server: training holds the GIL for long stretches, takes
gigabytes for a large base, and may have to be stopped at any moment; a process is stopped by a
signal, gives all its memory back, and can never take the serving thread down with it.

What it does, from the spec the server wrote into the dial's folder: SFT on the chosen answers,
then DPO, with the recipe's trainer (recipe.train_pre_layer), the held-out pairs measured at the
end; then the converter grafts P onto the base GGUF as a new file, and report.json says what was
made. It runs at a lower priority (nice 10) with one core fewer than the machine has, so the
server keeps answering while it trains.

What it says: one JSON object per line on stdout, nothing else there (stray prints of the
libraries go to stderr, which the server appends to teach.log):
    {"event": "stage", "stage": "sft"|"dpo"|"evaluate"|"convert", "step": int, "steps": int}
    {"event": "step", "stage": "sft"|"dpo", "step", "steps", "loss", "reward_accuracy", "eta_seconds"}
    {"event": "done", "report": {...}}         (report.json's content)
    {"event": "failed", "message": "one line"}
A loss that stops being finite ends the run as failed, before the broken P is saved.
"""

from __future__ import annotations

import datetime
import json
import logging
import math
import os
import shutil
import sys
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import IO, Any

from clm_local.errors import ClmError
from clm_local.files import write_json
from clm_local.teach.dials import REPORT_FILE
from clm_local.teach.settings import TeachSettings, plan

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

NICENESS = 10
PARENT_POLL_SECONDS = 2.0
Emit = Callable[..., None]


def main(argv: list[str] | None = None) -> int:
    """Run the spec's training; the exit status is 0 when a report was written, else 1."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m clm_local.teach.job SPEC.json", file=sys.stderr)
        return 2
    progress = os.fdopen(os.dup(1), "w", buffering=1, encoding="utf-8")
    os.dup2(2, 1)  # from here, anything printed goes to the log, never into the progress lines
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s: %(message)s")

    def emit(**event: Any) -> None:
        progress.write(json.dumps(event, allow_nan=False) + "\n")
        progress.flush()

    _end_with_the_server()
    try:
        spec = json.loads(Path(args[0]).read_text(encoding="utf-8"))
        with _exclusive(Path(spec["lock"])):
            _lower_priority()
            run(spec, emit)
        return 0
    except ClmError as error:
        print(f"teach job failed: {error}", file=sys.stderr, flush=True)
        emit(event="failed", message=str(error))
    except Exception as error:  # noqa: BLE001 - a bug: the log keeps the traceback, the status one line
        traceback.print_exc()
        emit(event="failed", message=f"{type(error).__name__}: {error} (teach.log has the details)")
    return 1


def run(spec: dict[str, Any], emit: Emit) -> dict[str, Any]:
    """Train, measure, convert; write report.json and emit it; the report."""
    import torch

    from clm_local.converters.convert import ConvertOptions, convert
    from clm_local.recipe.recipe import RecipeSettings, train_pre_layer

    settings = TeachSettings(**spec["settings"]).check()
    folder, dial_dir = Path(spec["folder"]), Path(spec["dial_dir"])
    train_file, held_out_file = Path(spec["train"]), Path(spec["held_out"])
    n_train, n_held_out = _count_lines(train_file), _count_lines(held_out_file)
    steps = plan(n_train + n_held_out, settings)
    torch.set_num_threads(max(1, int(spec["threads"])))
    recipe = RecipeSettings(
        seed=settings.seed,
        epochs=steps.dpo_epochs,
        lr=settings.lr,
        beta=settings.beta,
        sft_epochs=steps.sft_epochs,
        sft_lr=settings.sft_lr,
        batch_size=settings.batch_size,
        max_length=settings.max_length,
    )
    progress = Progress(emit, steps.sft_steps, steps.dpo_steps)
    progress.stage("sft" if steps.sft_steps else "dpo")
    checkpoint = dial_dir / "ckpt"
    result = train_pre_layer(
        Path(spec["base"]), train_file, checkpoint, recipe, eval_data=held_out_file, on_step=progress.step
    )
    held_out = result.metrics.get("eval") or {}
    if not all(math.isfinite(float(value)) for value in held_out.values()):
        raise ClmError(f"the held-out numbers of the trained P are not finite ({held_out}): P is broken")
    progress.stage("convert")
    gguf = dial_dir / spec["gguf"]
    convert(checkpoint, gguf, ConvertOptions(base=Path(spec["base"]), name=spec["model_name"]))
    shutil.rmtree(checkpoint.with_name(checkpoint.name + "-sft"), ignore_errors=True)  # SFT's P: a step only
    seconds = progress.finish()
    train_metrics = result.metrics.get("train") or {}
    report = {
        "name": spec["name"],
        "file": str(gguf.relative_to(folder)),
        "pairs": n_train + n_held_out,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "base": spec["base_id"],
        "held_out": {"pairs": n_held_out, **_rounded(held_out)},
        "train": {
            "pairs": n_train,
            "sft_steps": steps.sft_steps,
            "dpo_steps": steps.dpo_steps,
            **_rounded({k: v for k, v in train_metrics.items() if k in ("loss", "reward_accuracy")}),
        },
        "settings": asdict(settings),
        "seconds": seconds,
    }
    write_json(dial_dir / REPORT_FILE, report)
    emit(event="done", report=report)
    return report


class Progress:
    """Turns the trainer's per-stage steps into one count over SFT and DPO, with an ETA.

    The ETA is the stage's measured seconds per step times the steps left; during SFT it adds
    what DPO will take: loading the base again (as long as SFT's start took) and its steps at
    twice SFT's (each holds a chosen and a rejected answer). Conversion (seconds) is not counted.
    """

    def __init__(self, emit: Emit, sft_steps: int, dpo_steps: int) -> None:
        self.emit = emit
        self.offset = {"sft": 0, "dpo": sft_steps}
        self.stage_steps = {"sft": sft_steps, "dpo": dpo_steps}
        self.total = sft_steps + dpo_steps
        self.current: str | None = None
        self.started = time.monotonic()
        self.stage_started = self.started
        self.seconds: dict[str, float] = {}
        self.first: dict[str, tuple[float, int]] = {}  # stage -> (time, step) of its first step
        self.setup = 0.0  # seconds from SFT's start to its first step: loading the base, mostly

    def stage(self, name: str) -> None:
        now = time.monotonic()
        if self.current is not None:
            self.seconds[self.current] = round(now - self.stage_started, 1)
        self.current, self.stage_started = name, now
        step = self.total if name in ("evaluate", "convert") else self.offset.get(name, 0)
        self.emit(event="stage", stage=name, step=step, steps=self.total)

    def step(self, objective: str, step: int, stage_steps: int, metrics: dict) -> None:
        loss = float(metrics.get("loss", math.nan))
        if not math.isfinite(loss):
            raise ClmError(
                f"the {objective.upper()} loss became {loss} at step {step} of {stage_steps}: training "
                "diverged (a learning rate too high for these pairs?); nothing was saved"
            )
        now = time.monotonic()
        if objective not in self.first:
            self.first[objective] = (now, step)
            if objective == "sft":
                self.setup = now - self.stage_started
        accuracy = metrics.get("reward_accuracy")
        self.emit(
            event="step",
            stage=objective,
            step=self.offset[objective] + step,
            steps=self.total,
            loss=round(loss, 6),
            reward_accuracy=None if accuracy is None else round(float(accuracy), 4),
            eta_seconds=self._eta(objective, step, now),
        )
        if step == stage_steps:  # what the trainer does next: the other stage, or the held-out pairs
            self.stage("dpo" if objective == "sft" else "evaluate")

    def _eta(self, objective: str, step: int, now: float) -> float | None:
        first_time, first_step = self.first[objective]
        if step == first_step:
            return None
        per_step = (now - first_time) / (step - first_step)
        left = per_step * (self.stage_steps[objective] - step)
        if objective == "sft":
            left += self.setup + 2 * per_step * self.stage_steps["dpo"]
        return round(left, 1)

    def finish(self) -> dict[str, float]:
        self.seconds[self.current or "?"] = round(time.monotonic() - self.stage_started, 1)
        self.seconds["total"] = round(time.monotonic() - self.started, 1)
        return self.seconds


def _rounded(metrics: dict[str, Any]) -> dict[str, float]:
    return {key: round(float(value), 4) for key, value in metrics.items()}


def _count_lines(path: Path) -> int:
    with path.open("rb") as handle:
        return sum(1 for line in handle if line.strip())


class _exclusive:
    """The base folder's train.lock, held while training: one job per folder, even with two
    servers on the same data folder (the lock goes with the process, however it ends)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.handle: IO[bytes] | None = None

    def __enter__(self) -> None:
        if fcntl is None:
            return
        self.handle = self.path.open("ab")
        try:
            fcntl.flock(self.handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self.handle.close()
            raise ClmError(
                f"another training runs in {self.path.parent} (started by another server?)"
            ) from None

    def __exit__(self, *exc: object) -> None:
        if self.handle is not None:
            self.handle.close()


def _end_with_the_server() -> None:
    """Exit when the server that started this process is gone (killed: it could not end us), so
    no training runs on for nobody. Checked every PARENT_POLL_SECONDS by a daemon thread."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(PARENT_POLL_SECONDS)
        os._exit(1)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def _lower_priority() -> None:
    try:
        os.nice(NICENESS)
    except (AttributeError, OSError):
        pass


if __name__ == "__main__":
    sys.exit(main())
