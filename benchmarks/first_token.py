"""Time to first token from a cold process: `clm-local chat --prompt` against llama-cpp-python.

    .venv/bin/python benchmarks/first_token.py [MODEL] [--repeat 5]

Each run is a new process that loads the model, applies its chat template to one short question
and produces one token: `clm-local chat --prompt Q --max-tokens 1 --temp 0` (the default mode of
the file: logits mode reads the prompt twice), the same in embed mode (one sequence), and
`llama_cpp.Llama(MODEL).create_chat_completion`
with max_tokens=1 on the same file (what a llama-cpp-python user runs; it sees the aligned path
only). Interleaved, median of the repeats, in one run; the issue's target is at most 1.2x.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

QUESTION = "How do I boil an egg?"
LLAMA_CPP = """
import sys, llama_cpp
llm = llama_cpp.Llama(model_path=sys.argv[1], n_ctx=4096, verbose=False)
llm.create_chat_completion([{"role": "user", "content": sys.argv[2]}], max_tokens=1, temperature=0)
"""


def seconds(command: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", nargs="?", help="a CLM GGUF (default: the embedded default model)")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    from clm_local.default_model import default_model_path

    model = args.model or str(default_model_path())
    chat = [sys.executable, "-m", "clm_local.cli.main", "chat", "-m", model,
            "--prompt", QUESTION, "--max-tokens", "1", "--temp", "0"]  # fmt: skip
    commands = {
        "clm-local chat --prompt": chat,
        "clm-local chat --prompt --mode embed": [*chat, "--mode", "embed"],
        "llama_cpp.Llama": [sys.executable, "-c", LLAMA_CPP, model, QUESTION],
    }  # fmt: skip
    times: dict[str, list[float]] = {name: [] for name in commands}
    for _ in range(args.repeat):
        for name, command in commands.items():
            times[name].append(seconds(command))
    medians = {name: statistics.median(values) for name, values in times.items()}
    print("| cold process, one token | median (s) | min (s) | max (s) |")
    print("|---|---:|---:|---:|")
    for name, values in times.items():
        print(f"| {name} | {medians[name]:.2f} | {min(values):.2f} | {max(values):.2f} |")
    for name in list(commands)[:2]:
        print(f"\n{name} / llama-cpp-python: {medians[name] / medians['llama_cpp.Llama']:.2f}x", end="")
    print()


if __name__ == "__main__":
    main()
