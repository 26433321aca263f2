"""Decode speed when another program keeps a core busy: fixed threads against the default tuner.

    .venv/bin/python benchmarks/busy_machine.py [MODEL] [--tokens 64] [--repeat 3] [--competitors 1]

For each setting (`--threads` = every core, as before the tuner; and the default, which follows
the machine's load, see clm_local/runtime/threads.py) greedy decoding in logits mode is timed on
the quiet machine and with `--competitors` busy-looping processes started next to it, interleaved,
in one run, so the ratios hold whatever else the machine does. Reported: decode tokens/s (median
of the repeats) in each case and busy/quiet per setting; the issue's target is at least 0.4x.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np

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


def decode_speed(model_path: str, threads: int | None, tokens: int) -> float:
    """Greedy decode tokens/s in logits mode at alpha 0.8, after reading the prompt."""
    import clm_local
    from clm_local.runtime.model import ALIGNED_SEQ, REFERENCE_SEQ

    with clm_local.load(model_path, n_ctx=512, n_threads=threads) as model:
        prompt = model.tokenize(PROMPT)
        model.set_alpha(ALIGNED_SEQ, 1.0)
        model.set_alpha(REFERENCE_SEQ, 0.0)
        mix = {ALIGNED_SEQ: (REFERENCE_SEQ, 0.8)}
        out = model.decode({ALIGNED_SEQ: prompt, REFERENCE_SEQ: prompt}, mix=mix)
        started = time.perf_counter()
        for _ in range(tokens):
            token = int(np.argmax(out[ALIGNED_SEQ][-1]))
            out = model.decode({ALIGNED_SEQ: [token], REFERENCE_SEQ: [token]}, mix=mix)
        return tokens / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", nargs="?", help="a CLM GGUF (default: the embedded default model)")
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--competitors", type=int, default=1)
    args = parser.parse_args()
    from clm_local.default_model import default_model_path
    from clm_local.runtime.threads import usable_cores

    model = args.model or str(default_model_path())
    settings = {f"fixed {usable_cores()} threads": usable_cores(), "default (tuned)": None}
    speeds: dict[tuple[str, str], list[float]] = {}
    for repeat in range(args.repeat):
        for name, threads in settings.items():
            for load in ("quiet", "busy"):
                print(f"repeat {repeat + 1}/{args.repeat}: {name}, {load}", file=sys.stderr)
                with competitors(args.competitors if load == "busy" else 0):
                    speed = decode_speed(model, threads, args.tokens)
                speeds.setdefault((name, load), []).append(speed)
    rows = []
    for name in settings:
        quiet = statistics.median(speeds[(name, "quiet")])
        busy = statistics.median(speeds[(name, "busy")])
        rows.append({"setting": name, "quiet_tps": round(quiet, 1), "busy_tps": round(busy, 1),
                     "busy_over_quiet": round(busy / quiet, 2)})  # fmt: skip
    print(json.dumps({"cores": usable_cores(), "competitors": args.competitors, "cpu_count": os.cpu_count(),
                      "tokens": args.tokens, "rows": rows}))  # fmt: skip
    print(f"\n| setting | quiet (tok/s) | {args.competitors} busy process (tok/s) | busy / quiet |")
    print("|---|---:|---:|---:|")
    for r in rows:
        print(f"| {r['setting']} | {r['quiet_tps']} | {r['busy_tps']} | {r['busy_over_quiet']}x |")


if __name__ == "__main__":
    main()
