"""Serving throughput of `clm-local serve`: N clients at once, each at its own alpha, vs one by one.

    .venv/bin/python benchmarks/serve_throughput.py [MODEL] [--levels 1,2,4,8] [--max-tokens 64]
                                                    [--modes embed,logits,mixed] [--threads 2]
                                                    [--repeat 1] [--json]

For each mode (embed only, logits only, the two alternating) and each level N, N streamed chat
requests (alphas from -0.5 to 3, greedy, different questions) are sent at once, and the same N
requests are sent one after another, on the same server in the same run, so the ratio holds on a
busy machine even when the absolute numbers do not. Reported per row: aggregate answer tokens per
second both ways and their ratio, forward passes per decode step while at once (1.0 when every
step is one ubatch), the median time to first token when sent at once, and the slowest request's
time over the median (starvation). With --repeat K, each row runs K times, alternating the two
ways, and the best aggregate of each way is kept.

Then memory: a second server at the defaults but `--parallel 4` (ctx 4096, KV pool 4 x 4096), its
resident memory once ready (idle) and its peak after 4 clients at once.
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
MODES = {"embed": ["embed"], "logits": ["logits"], "mixed": ["logits", "embed"]}
READY_PREFIX = "clm-local serving on "


@dataclass
class Timing:
    first_token_s: float
    total_s: float
    tokens: int


def start_server(model: str | None, *options: str) -> tuple[subprocess.Popen, str]:
    command = [sys.executable, "-m", "clm_local.cli.main", "serve", "--port", "0", *options]
    command += [model] if model else []
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=tempfile.TemporaryFile(), text=True)
    for line in process.stdout:
        if line.startswith(READY_PREFIX):
            return process, line[len(READY_PREFIX) :].strip().rstrip("/")
    raise SystemExit(f"the server did not start (exit status {process.wait()})")


def memory_mib(pid: int, field: str) -> float:
    """VmRSS (now) or VmHWM (peak) of a process, in MiB."""
    for line in open(f"/proc/{pid}/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise SystemExit(f"no {field} in /proc/{pid}/status")


def metric(url: str, name: str) -> int:
    for line in httpx.get(url + "/metrics").text.splitlines():
        if line.startswith(name + " "):
            return int(line.split()[1])
    raise SystemExit(f"/metrics has no {name}")


def one_request(url: str, index: int, max_tokens: int, modes: list[str]) -> Timing:
    body = {
        "model": "default",
        "messages": [{"role": "user", "content": QUESTIONS[index % len(QUESTIONS)]}],
        "temperature": 0,
        "max_tokens": max_tokens,
        "alpha": ALPHAS[index % len(ALPHAS)],
        "mode": modes[index % len(modes)],
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


def at_once(url: str, count: int, max_tokens: int, modes: list[str]) -> tuple[float, list[Timing]]:
    """Wall time and per-request timings of `count` requests sent together."""
    timings: list[Timing | None] = [None] * count

    def run(i: int) -> None:
        timings[i] = one_request(url, i, max_tokens, modes)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return time.perf_counter() - start, timings  # type: ignore[return-value]


def one_by_one(url: str, count: int, max_tokens: int, modes: list[str]) -> tuple[float, list[Timing]]:
    start = time.perf_counter()
    timings = [one_request(url, i, max_tokens, modes) for i in range(count)]
    return time.perf_counter() - start, timings


def measure_level(url: str, count: int, max_tokens: int, repeat: int, mode: str) -> dict:
    modes = MODES[mode]
    best_together = best_alone = 0.0
    ttft: list[float] = []
    spread: list[float] = []
    steps = passes = 0
    for _ in range(repeat):
        steps_before = metric(url, "clm_decode_steps_total")
        passes_before = metric(url, "clm_decode_forward_passes_total")
        wall, timings = at_once(url, count, max_tokens, modes)
        steps += metric(url, "clm_decode_steps_total") - steps_before
        passes += metric(url, "clm_decode_forward_passes_total") - passes_before
        best_together = max(best_together, sum(t.tokens for t in timings) / wall)
        ttft += [t.first_token_s for t in timings]
        totals = [t.total_s for t in timings]
        spread.append(max(totals) / statistics.median(totals))
        wall, timings = one_by_one(url, count, max_tokens, modes)
        best_alone = max(best_alone, sum(t.tokens for t in timings) / wall)
    return {
        "mode": mode,
        "clients": count,
        "together_tokens_per_s": round(best_together, 1),
        "one_by_one_tokens_per_s": round(best_alone, 1),
        "ratio": round(best_together / best_alone, 2),
        "forward_passes_per_step": round(passes / steps, 2),
        "median_first_token_s": round(statistics.median(ttft), 3),
        "slowest_over_median": round(max(spread), 2),
    }


def measure_memory(model: str | None, threads: int, max_tokens: int) -> dict:
    """Idle and peak resident memory of `serve --parallel 4` at the other defaults."""
    process, url = start_server(model, "--parallel", "4", "--threads", str(threads))
    try:
        one_request(url, 0, 4, ["logits"])
        idle = memory_mib(process.pid, "VmRSS")
        at_once(url, 4, max_tokens, MODES["mixed"])
        peak = memory_mib(process.pid, "VmHWM")
    finally:
        process.terminate()
        process.wait()
    return {"idle_rss_mib": round(idle), "peak_rss_mib": round(peak)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", nargs="?", help="a CLM GGUF (default: the embedded default model)")
    parser.add_argument("--levels", default="1,2,4,8", help="numbers of concurrent clients")
    parser.add_argument("--modes", default="embed,logits,mixed", help="embed, logits and/or mixed")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--ctx", type=int, default=1024)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--no-memory", action="store_true", help="skip the memory measure")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    levels = [int(n) for n in args.levels.split(",")]
    modes = args.modes.split(",")
    unknown = set(modes) - set(MODES)
    if unknown:
        raise SystemExit(f"unknown mode(s) {', '.join(sorted(unknown))}: choose from {', '.join(MODES)}")
    process, url = start_server(
        args.model, "--parallel", str(max(levels)), "--threads", str(args.threads), "--ctx", str(args.ctx)
    )
    try:
        one_request(url, 0, 4, ["logits"])  # warm-up
        rows = []
        for mode in modes:
            for count in levels:
                rows.append(measure_level(url, count, args.max_tokens, args.repeat, mode))
                print(f"{mode}: {count} client(s) done", file=sys.stderr)
    finally:
        process.terminate()
        process.wait()
    memory = None if args.no_memory else measure_memory(args.model, args.threads, args.max_tokens)
    if args.json:
        print(
            json.dumps(
                {"threads": args.threads, "max_tokens": args.max_tokens, "rows": rows, "memory": memory}
            )
        )
        return
    print(f"threads {args.threads}, {args.max_tokens} greedy tokens per request, alphas -0.5 to 3\n")
    print("| mode | clients | at once (tok/s) | one by one (tok/s) | ratio | passes / step | median TTFT (s) "
          "| slowest / median |")  # fmt: skip
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['mode']} | {r['clients']} | {r['together_tokens_per_s']} | "
              f"{r['one_by_one_tokens_per_s']} | "
              f"{r['ratio']}x | {r['forward_passes_per_step']} | {r['median_first_token_s']} | "
              f"{r['slowest_over_median']} |")  # fmt: skip
    if memory:
        print(f"\nserve --parallel 4 at the defaults: idle RSS {memory['idle_rss_mib']} MiB, "
              f"peak RSS {memory['peak_rss_mib']} MiB (4 clients at once)")  # fmt: skip


if __name__ == "__main__":
    main()
