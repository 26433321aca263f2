"""`make device-check BACKEND=cuda|metal|cpu`: verify the runtime on this machine's backend in minutes.

One summary line per check, then exit 0 only if every check passed:
1. build: `clm-local runtime install --backend BACKEND` (the wheel cache makes a second run quick);
2. offload: the installed build reports GPU offload (cuda, metal) or none (cpu);
3. tests: the runtime, family, server and RPC tests with every layer offloaded
   (CLM_LOCAL_GPU_LAYERS=99 reaches every model the tests and their servers load; the
   rpc-servers the RPC test starts compute on the GPU too);
4. bench: `clm-local bench` on the default model, offloaded, with its ratios.
CI runs it with BACKEND=cpu, so the script itself cannot rot. To report a GPU result, paste the
summary lines (and `clm-local runtime status`) into an issue.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TESTS = [
    "tests/test_runtime.py",
    "tests/test_families.py",
    "tests/test_server.py",
    "tests/test_server_batching.py",
    "tests/test_rpc.py",
]
CLI = [sys.executable, "-m", "clm_local.cli.main"]


def check(command: list[str], env: dict[str, str], timeout: float) -> tuple[bool, str, float]:
    started = time.monotonic()
    try:
        result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return False, f"timed out after {timeout:.0f} s", time.monotonic() - started
    output = (result.stdout + result.stderr).strip()
    return result.returncode == 0, output, time.monotonic() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=["cpu", "cuda", "metal"], required=True)
    parser.add_argument("--skip-build", action="store_true", help="use the runtime installed now")
    args = parser.parse_args()
    env = os.environ | {"CLM_LOCAL_GPU_LAYERS": "99"}
    lines: list[tuple[str, bool, str]] = []

    def report(name: str, ok: bool, detail: str) -> None:
        lines.append((name, ok, detail))
        print(f"{'PASS' if ok else 'FAIL'} {name}: {detail}", flush=True)

    if not args.skip_build:
        ok, output, seconds = check([*CLI, "runtime", "install", "--backend", args.backend], env, 1800)
        report("build", ok, f"{seconds:.0f} s" if ok else output.splitlines()[-1] if output else "failed")
        if not ok:
            return 1
    ok, output, _ = check([sys.executable, "-c", STATUS], env, 120)
    status = json.loads(output.splitlines()[-1]) if ok else {}
    wants_gpu = args.backend != "cpu"
    offload_ok = ok and status.get("gpu_offload") == wants_gpu and status.get("has_hook")
    report("offload", bool(offload_ok), json.dumps(status) if ok else output[-300:])

    pytest = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *TESTS]
    ok, output, seconds = check(pytest, env, 1200)
    summary = [line for line in output.splitlines() if re.search(r"\d+ (passed|failed)", line)]
    failed = [
        line.removeprefix("FAILED ").split(" - ")[0]
        for line in output.splitlines()
        if line.startswith("FAILED ")
    ]
    named = f"; failed: {', '.join(failed)}" if failed else ""
    report("tests", ok, f"{summary[-1] if summary else output[-300:]} ({seconds:.0f} s){named}")

    bench = [*CLI, "bench", "--repeat", "1", "--prompt-tokens", "128", "--gen-tokens", "64", "--json"]
    ok, output, seconds = check(bench, env, 900)
    report("bench", ok, bench_summary(output) + f" ({seconds:.0f} s)" if ok else output[-300:])
    passed = sum(ok for _, ok, _ in lines)
    print(f"device-check ({args.backend}): {passed} of {len(lines)} checks passed")
    print(f"device-check: {passed} passed, {len(lines) - passed} failed")
    return 0 if all(ok for _, ok, _ in lines) else 1


STATUS = """
import dataclasses, json
from clm_local.runtime import library
print(json.dumps(dataclasses.asdict(library.status())))
"""


def bench_summary(output: str) -> str:
    """Decode speed against base of each configuration, from `clm-local bench --json`."""
    try:
        configs = json.JSONDecoder().raw_decode(output[output.find("{") :])[0]["configs"]  # progress follows
        return ", ".join(
            f"{name} {figures['decode_tps']:.1f} tok/s ({figures['vs_base']['decode_tps']:.2f}x)"
            for name, figures in configs.items()
        )
    except (ValueError, KeyError, TypeError):
        return f"unreadable bench output: {output[-200:]}"


if __name__ == "__main__":
    sys.exit(main())
