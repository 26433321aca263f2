"""`clm-local bench --busy`: decode speed when other programs keep cores busy.

For two settings (every usable core, fixed, as before the runtime's thread tuner; and the
default, which follows the machine's load: clm_local/runtime/threads.py) greedy decoding in
logits mode is timed on the quiet machine and with busy-looping processes next to it,
interleaved, in one run, so that busy / quiet holds whatever else the machine does.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

PROMPT = "Write a long story about a lighthouse keeper who finds a message in a bottle."


@contextmanager
def competitors(count: int) -> Iterator[None]:
    """`count` processes that spin on the CPU for as long as the block runs."""
    spinning = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(count)]
    time.sleep(0.5)  # let the scheduler place them
    try:
        yield
    finally:
        for process in spinning:
            process.kill()
            process.wait()


def decode_speed(model_path: Path, threads: int | None, tokens: int, alpha: float) -> float:
    """Greedy decode tokens/s in logits mode, after reading the prompt."""
    from clm_local.benchmarks.greedy import greedy_decode_speed

    import clm_local

    with clm_local.load(model_path, n_ctx=512, n_threads=threads) as model:
        return greedy_decode_speed(model, model.tokenize(PROMPT), tokens, alpha, "logits")


def run_busy(
    model_path: Path,
    *,
    tokens: int,
    repeat: int,
    alpha: float,
    busy_processes: int = 1,
    progress: Callable[[str], None] = lambda line: None,
) -> dict[str, object]:
    """Quiet and busy decode speed per thread setting (medians of `repeat` runs)."""
    from clm_local.runtime.threads import usable_cores

    cores = usable_cores()
    settings = {f"fixed {cores} threads": cores, "default (tuned)": None}
    speeds: dict[tuple[str, str], list[float]] = {}
    for run in range(repeat):
        for name, threads in settings.items():
            for load in ("quiet", "busy"):
                progress(f"busy machine, repeat {run + 1}/{repeat}: {name}, {load}")
                with competitors(busy_processes if load == "busy" else 0):
                    speed = decode_speed(model_path, threads, tokens, alpha)
                speeds.setdefault((name, load), []).append(speed)
    rows = []
    for name in settings:
        quiet, busy = (statistics.median(speeds[(name, load)]) for load in ("quiet", "busy"))
        rows.append({"setting": name, "quiet_tps": quiet, "busy_tps": busy, "busy_over_quiet": busy / quiet})
    return {"cores": cores, "busy_processes": busy_processes, "tokens": tokens, "rows": rows}


def format_busy(result: dict[str, object]) -> str:
    lines = [
        f"Busy machine: logits mode, {result['tokens']} greedy tokens, {result['busy_processes']} "
        f"busy-looping process(es) next to it, median of the repeats.",
        "",
        "| setting | quiet (tok/s) | busy (tok/s) | busy / quiet |",
        "|---|---:|---:|---:|",
    ]
    for row in result["rows"]:  # type: ignore[attr-defined]
        speeds = f"{row['quiet_tps']:.1f} | {row['busy_tps']:.1f}"
        lines.append(f"| {row['setting']} | {speeds} | {row['busy_over_quiet']:.2f}x |")
    return "\n".join(lines)
