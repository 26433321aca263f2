"""What llama.cpp's RPC backend costs: the same model run locally and split across rpc-servers.

`python -m clm_local.benchmarks.rpc_overhead [MODEL] [--rpc HOST:PORT,...]` times base, embed
and logits (worker.py, one process per run) alternately locally and through RPC, `--repeat`
times, and prints the medians and the RPC/local ratio of each. Without --rpc it starts two
rpc-servers on this machine, so the figure is the protocol's own cost (every layer's input and
output crossing a socket, a round trip per graph), not a network's.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

from clm_local.benchmarks.plain_files import write_plain_files
from clm_local.benchmarks.settings import BenchSettings
from clm_local.benchmarks.suite import run_in_subprocess
from clm_local.benchmarks.worker import RunSpec

from clm_local.errors import ClmError
from clm_local.files import cache_dir
from clm_local.runtime import rpc

CONFIGS = ("base", "embed", "logits")
PLACEMENTS = ("local", "rpc")
START_TIMEOUT_S = 30


class LocalRpcServer:
    """`clm-local rpc-server` on a free loopback port of this machine, waited for until it answers."""

    def __init__(self, threads: int | None = None) -> None:
        import socket

        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.endpoint = f"127.0.0.1:{self.port}"
        command = [sys.executable, "-m", "clm_local.cli.main", "rpc-server", "--port", str(self.port)]
        command += ["--threads", str(threads)] if threads else []
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            try:
                rpc.probe(self.endpoint, timeout=2)
                return
            except ClmError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise ClmError(
                        f"rpc-server did not start: {self.process.stderr.read().strip()}"
                    ) from None
                time.sleep(0.2)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()


@contextlib.contextmanager
def local_rpc_servers(count: int, threads: int | None = None) -> Iterator[list[str]]:
    """`count` rpc-servers on this machine for the duration of the block; their endpoints."""
    servers: list[LocalRpcServer] = []
    try:
        for _ in range(count):
            servers.append(LocalRpcServer(threads))
        yield [server.endpoint for server in servers]
    finally:
        for server in servers:
            server.stop()


def run_rpc_overhead(model: Path, settings: BenchSettings, endpoints: list[str]) -> dict:
    """{config: {placement: median figures, "rpc_vs_local": ratios}}, runs interleaved."""
    settings.check()
    runs: dict[tuple[str, str], list[dict[str, float]]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-", dir=cache_dir()) as folder:
        files = write_plain_files(model, Path(folder))
        for repeat in range(1, settings.repeat + 1):
            for config in CONFIGS:
                for placement in PLACEMENTS:
                    print(f"repeat {repeat}/{settings.repeat}: {config}, {placement}", file=sys.stderr)
                    spec = RunSpec.for_run(config, files, settings, endpoints if placement == "rpc" else ())
                    runs.setdefault((config, placement), []).append(run_in_subprocess(spec))
    report: dict = {"settings": {**settings.__dict__, "rpc": endpoints}, "configs": {}}
    for config in CONFIGS:
        medians = {
            placement: {
                figure: statistics.median(run[figure] for run in runs[(config, placement)])
                for figure in ("prefill_tps", "decode_tps")
            }
            for placement in PLACEMENTS
        }
        ratios = {figure: medians["rpc"][figure] / medians["local"][figure] for figure in medians["rpc"]}
        report["configs"][config] = {**medians, "rpc_vs_local": ratios}
    return report


def format_table(report: dict) -> str:
    lines = [
        "| config | decode local | decode RPC | RPC/local | prefill local | prefill RPC | RPC/local |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for config, row in report["configs"].items():
        local, remote, ratio = row["local"], row["rpc"], row["rpc_vs_local"]
        lines.append(
            f"| {config} | {local['decode_tps']:.1f} tok/s | {remote['decode_tps']:.1f} tok/s | "
            f"{ratio['decode_tps']:.2f}x | {local['prefill_tps']:.0f} tok/s | "
            f"{remote['prefill_tps']:.0f} tok/s | {ratio['prefill_tps']:.2f}x |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", nargs="?", type=Path, help="a CLM GGUF (default: the default model)")
    parser.add_argument("--rpc", help="HOST:PORT,... (default: two rpc-servers started on this machine)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--prompt-tokens", type=int, default=128)
    parser.add_argument("--gen-tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=None, help="(default: every core)")
    parser.add_argument("--json", type=Path, help="also write the report here")
    args = parser.parse_args(argv)
    try:
        from clm_local import default_model

        model = args.model or default_model.default_model_path()
        settings = BenchSettings(
            prompt_tokens=args.prompt_tokens, gen_tokens=args.gen_tokens, repeat=args.repeat, n_ctx=1024
        )
        settings = replace(settings, threads=args.threads or os.cpu_count() or 1)
        with contextlib.ExitStack() as stack:
            if args.rpc:
                endpoints = rpc.parse_endpoints(args.rpc)
            else:  # each server computes in turn: each may use every core, as the local run does
                endpoints = stack.enter_context(local_rpc_servers(2, settings.threads))
            report = run_rpc_overhead(model, settings, endpoints)
    except ClmError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(format_table(report))
    if args.json:
        args.json.write_text(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
