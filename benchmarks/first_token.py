"""`clm-local bench --first-token`: time to first token from a cold process.

Each run is a new process that loads the model, applies its chat template to one short question
and produces one token: `clm-local chat --prompt Q --max-tokens 1 --temp 0` with the file's
defaults (the default model's alpha 1 is one path, so a one-shot answer runs one sequence), at
alpha 0.8 in logits mode (both paths: the prompt is read twice) and at alpha 0.8 in embed mode,
against `llama_cpp.Llama(MODEL).create_chat_completion` with max_tokens=1 on the same file (what
a llama-cpp-python user runs; it sees the aligned path only). Interleaved, medians, in one run.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

QUESTION = "How do I boil an egg?"
LLAMA_CPP = """
import sys, llama_cpp
llm = llama_cpp.Llama(model_path=sys.argv[1], n_ctx=4096, verbose=False)
llm.create_chat_completion([{"role": "user", "content": sys.argv[2]}], max_tokens=1, temperature=0)
"""
REFERENCE = "llama_cpp.Llama"


def _seconds(command: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - started


def run_first_token(
    model_path: Path, *, repeat: int, progress: Callable[[str], None] = lambda line: None
) -> dict[str, object]:
    """Seconds to the first token per command (median, min, max) and each against llama-cpp-python."""
    chat = [sys.executable, "-m", "clm_local.cli.main", "chat", "-m", str(model_path),
            "--prompt", QUESTION, "--max-tokens", "1", "--temp", "0"]  # fmt: skip
    commands = {
        "clm-local chat --prompt": chat,
        "clm-local chat --prompt --alpha 0.8": [*chat, "--alpha", "0.8", "--mode", "logits"],
        "clm-local chat --prompt --alpha 0.8 --mode embed": [*chat, "--alpha", "0.8", "--mode", "embed"],
        REFERENCE: [sys.executable, "-c", LLAMA_CPP, str(model_path), QUESTION],
    }
    times: dict[str, list[float]] = {name: [] for name in commands}
    for run in range(repeat):
        for name, command in commands.items():
            progress(f"first token, repeat {run + 1}/{repeat}: {name}")
            times[name].append(_seconds(command))
    reference = statistics.median(times[REFERENCE])
    return {
        name: {
            "median_s": statistics.median(values),
            "min_s": min(values),
            "max_s": max(values),
            "over_llama_cpp": statistics.median(values) / reference,
        }
        for name, values in times.items()
    }


def format_first_token(result: dict[str, dict[str, float]]) -> str:
    lines = [
        "Time to first token, cold process, one short question:",
        "",
        "| command | median (s) | min (s) | max (s) | x llama_cpp.Llama |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, row in result.items():
        lines.append(
            f"| {name} | {row['median_s']:.2f} | {row['min_s']:.2f} | {row['max_s']:.2f} "
            f"| {row['over_llama_cpp']:.2f} |"
        )
    return "\n".join(lines)
