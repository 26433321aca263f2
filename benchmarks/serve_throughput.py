"""Serving throughput of `clm-local serve`: N clients at once, each at its own alpha, vs one by one.

    .venv/bin/python benchmarks/serve_throughput.py [MODEL] [--levels 1,2,4,8] [--max-tokens 64]
                                                    [--threads 2] [--repeat 1] [--json]

For each level N, N streamed chat requests (alphas from -0.5 to 3, logits and embed mode
alternating, greedy, different questions) are sent at once, and the same N requests are sent one
after another, on the same server in the same run, so the ratio holds on a busy machine even
when the absolute numbers do not. Reported per level: aggregate answer tokens per second both
ways and their ratio, the median time to first token when sent at once, and the slowest request's
time over the median (starvation). With --repeat K, each level runs K times, alternating the two
ways, and the best aggregate of each way is kept.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass

import httpx

QUESTIONS = [
    "Write a short story about a lighthouse keeper.",
    "Explain how a bicycle works.",
    "Describe a walk through a forest in autumn.",
    "Tell me about the history of bread.",
    "Explain why the sea is salty.",
    "Describe your ideal weekend.",
    "Write a letter to a friend about a trip to the mountains.",
    "Explain how rain forms.",
]
ALPHAS = [-0.5, 0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0]
MODES = ["logits", "embed"]
READY_PREFIX = "clm-local serving on "


@dataclass
class Timing:
    first_token_s: float
    total_s: float
    tokens: int


def start_server(model: str | None, parallel: int, threads: int, ctx: int) -> tuple[subprocess.Popen, str]:
    command = [sys.executable, "-m", "clm_local.cli.main", "serve", "--port", "0",
               "--parallel", str(parallel), "--threads", str(threads), "--ctx", str(ctx)]  # fmt: skip
    command += [model] if model else []
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=tempfile.TemporaryFile(), text=True)
    for line in process.stdout:
        if line.startswith(READY_PREFIX):
            return process, line[len(READY_PREFIX) :].strip().rstrip("/")
    raise SystemExit(f"the server did not start (exit status {process.wait()})")


def one_request(url: str, index: int, max_tokens: int) -> Timing:
    body = {
        "model": "default",
        "messages": [{"role": "user", "content": QUESTIONS[index % len(QUESTIONS)]}],
        "temperature": 0,
        "max_tokens": max_tokens,
        "alpha": ALPHAS[index % len(ALPHAS)],
        "mode": MODES[index % len(MODES)],
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    start = time.perf_counter()
    first = None
    tokens = 0
    with httpx.stream("POST", url + "/v1/chat/completions", json=body, timeout=600) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if chunk["choices"] and chunk["choices"][0]["delta"].get("content") and first is None:
                first = time.perf_counter() - start
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
    total = time.perf_counter() - start
    return Timing(first if first is not None else total, total, tokens)


def at_once(url: str, count: int, max_tokens: int) -> tuple[float, list[Timing]]:
    """Wall time and per-request timings of `count` requests sent together."""
    timings: list[Timing | None] = [None] * count

    def run(i: int) -> None:
        timings[i] = one_request(url, i, max_tokens)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return time.perf_counter() - start, timings  # type: ignore[return-value]


def one_by_one(url: str, count: int, max_tokens: int) -> tuple[float, list[Timing]]:
    start = time.perf_counter()
    timings = [one_request(url, i, max_tokens) for i in range(count)]
    return time.perf_counter() - start, timings


def measure_level(url: str, count: int, max_tokens: int, repeat: int) -> dict:
    best_together = best_alone = 0.0
    ttft: list[float] = []
    spread: list[float] = []
    for _ in range(repeat):
        wall, timings = at_once(url, count, max_tokens)
        best_together = max(best_together, sum(t.tokens for t in timings) / wall)
        ttft += [t.first_token_s for t in timings]
        totals = [t.total_s for t in timings]
        spread.append(max(totals) / statistics.median(totals))
        wall, timings = one_by_one(url, count, max_tokens)
        best_alone = max(best_alone, sum(t.tokens for t in timings) / wall)
    return {
        "clients": count,
        "together_tokens_per_s": round(best_together, 1),
        "one_by_one_tokens_per_s": round(best_alone, 1),
        "ratio": round(best_together / best_alone, 2),
        "median_first_token_s": round(statistics.median(ttft), 3),
        "slowest_over_median": round(max(spread), 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", nargs="?", help="a CLM GGUF (default: the embedded default model)")
    parser.add_argument("--levels", default="1,2,4,8", help="numbers of concurrent clients")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--ctx", type=int, default=1024)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    levels = [int(n) for n in args.levels.split(",")]
    process, url = start_server(args.model, max(levels), args.threads, args.ctx)
    try:
        one_request(url, 0, 4)  # warm-up
        rows = []
        for count in levels:
            rows.append(measure_level(url, count, args.max_tokens, args.repeat))
            print(f"{count} client(s) done", file=sys.stderr)
    finally:
        process.terminate()
        process.wait()
    if args.json:
        print(json.dumps({"threads": args.threads, "max_tokens": args.max_tokens, "levels": rows}))
        return
    print(f"threads {args.threads}, {args.max_tokens} greedy tokens per request, alphas and modes mixed\n")
    print("| clients | at once (tok/s) | one by one (tok/s) | ratio | median TTFT (s) | slowest / median |")
    print("|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['clients']} | {r['together_tokens_per_s']} | {r['one_by_one_tokens_per_s']} | "
              f"{r['ratio']}x | {r['median_first_token_s']} | {r['slowest_over_median']} |")  # fmt: skip


if __name__ == "__main__":
    main()
