"""A real `clm-local serve` in a child process, on a free loopback port, for the server tests.

The server picks its own port (--port 0) and says the URL in its one ready line, so no two test
runs race for a port. One llama.cpp thread keeps it steady on a busy machine.
"""

from __future__ import annotations

import os
import selectors
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CLI = [sys.executable, "-m", "clm_local.cli.main"]
READY_PREFIX = "clm-local serving on "
START_TIMEOUT_S = 180


class ServerProcess:
    """`clm-local serve --port 0 ARGS`, started and waited for; `stop` ends it with SIGTERM."""

    def __init__(self, *args: str, env: dict[str, str] | None = None) -> None:
        self.stderr = tempfile.TemporaryFile("w+")  # a file, so a chatty server never blocks on a pipe
        self.process = subprocess.Popen(
            [*CLI, "serve", "--port", "0", "--threads", "1", *args],
            stdout=subprocess.PIPE,
            stderr=self.stderr,
            text=True,
            env=env,
        )
        self.url = self._wait_for_ready_line()

    def _wait_for_ready_line(self) -> str:
        selector = selectors.DefaultSelector()
        selector.register(self.process.stdout, selectors.EVENT_READ)
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if selector.select(timeout=1.0):
                line = self.process.stdout.readline()
                if line.startswith(READY_PREFIX):
                    return line[len(READY_PREFIX) :].strip().rstrip("/")
                if not line and self.process.poll() is not None:
                    break
        self.process.kill()
        self.process.wait()
        raise RuntimeError(f"the server did not start: {self.errors().strip()}")

    def errors(self) -> str:
        """What the server wrote on stderr so far."""
        self.stderr.seek(0)
        return self.stderr.read()

    @property
    def api(self) -> str:
        return self.url + "/v1"

    def stop(self, timeout: float = 60) -> int:
        """SIGTERM and wait; the exit status."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.process.stdout.close()
        return self.process.returncode


def run_cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout)


def write_garbage(path: Path) -> Path:
    path.write_bytes(b"GGUF" + os.urandom(64))
    return path
