"""Run every configuration `repeat` times, interleaved, and summarise the figures.

Round-robin order (base, embed, logits, two_model, base, ...) spreads machine drift (thermal
throttling, other processes) over all configurations alike instead of charging it to whichever
ran last. Each run is its own process (see worker.py); the summary keeps the median of each
figure with its min and max, and the ratio of the medians to `base`.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path

from clm_local.benchmarks.machine import load_average, machine_info
from clm_local.benchmarks.plain_files import write_plain_files
from clm_local.benchmarks.settings import BenchSettings
from clm_local.benchmarks.worker import CONFIGS, RunSpec

from clm_local.errors import ClmError
from clm_local.files import cache_dir

FIGURES = ("prefill_tps", "decode_tps", "peak_rss_mb")


def run_benchmark(
    model: Path, settings: BenchSettings, progress: Callable[[str], None]
) -> dict[str, dict[str, object]]:
    """{"machine": ..., "configs": {config: summary}} for the CLM file `model`."""
    settings.check()
    settings = replace(settings, threads=settings.threads or os.cpu_count() or 1)
    machine = machine_info(settings.threads)
    runs: dict[str, list[dict[str, float]]] = {config: [] for config in CONFIGS}
    with tempfile.TemporaryDirectory(prefix="bench-", dir=cache_dir()) as folder:
        progress(f"writing the plain base and aligned copies of {model.name}")
        files = write_plain_files(model, Path(folder))
        for repeat in range(1, settings.repeat + 1):
            for config in CONFIGS:
                progress(f"repeat {repeat}/{settings.repeat}: {config}")
                spec = RunSpec.for_run(config, files, settings)
                runs[config].append(run_in_subprocess(spec))
    machine["load_average_after"] = load_average()
    machine["run"] = {"model": str(model), **asdict(settings)}
    return {
        "machine": machine,
        "configs": {config: summarize(runs[config], runs["base"]) for config in CONFIGS},
    }


def run_in_subprocess(spec: RunSpec) -> dict[str, float]:
    """One run in a fresh interpreter: its peak RSS is that configuration's alone."""
    command = [sys.executable, "-m", "clm_local.benchmarks.worker", spec.to_json()]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        lines = result.stderr.strip().splitlines() or [f"exit status {result.returncode}"]
        raise ClmError(f"the {spec.config} run failed: {lines[-1].removeprefix('error: ')}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def summarize(runs: list[dict[str, float]], base_runs: list[dict[str, float]]) -> dict[str, object]:
    """Medians under the figure names, then min, max, KV cache size, the RSS of the bare process
    and the ratios to base."""
    medians = {figure: statistics.median(run[figure] for run in runs) for figure in FIGURES}
    base_medians = {figure: statistics.median(run[figure] for run in base_runs) for figure in FIGURES}
    return {
        **medians,
        "min": {figure: min(run[figure] for run in runs) for figure in FIGURES},
        "max": {figure: max(run[figure] for run in runs) for figure in FIGURES},
        "kv_cache_mb": runs[0]["kv_cache_mb"],
        "startup_rss_mb": statistics.median(run["startup_rss_mb"] for run in runs),
        "vs_base": {figure: medians[figure] / base_medians[figure] for figure in FIGURES},
        "runs": len(runs),
    }
