"""llama.cpp's RPC backend: one model split across `rpc-server` processes on other machines.

`clm-local rpc-server` runs llama.cpp's own rpc-server (built with the runtime, build.py) on each
host; a client lists them as `--rpc HOST:PORT[,HOST:PORT...]`, and llama.cpp places the model's
layers on those servers and the local device as it always does (servers first, then local GPUs;
layers not offloaded stay on the local CPU). The pre-layer needs nothing of its own here: its
blend coefficients and logit-mix rows are graph inputs, which llama.cpp's scheduler copies to
whichever backend computes the layer that reads them.

What llama.cpp does not do, and this module does:
- a server that cannot be reached, or that is not an rpc-server of this protocol version, is a
  clear ClmError before llama.cpp connects (llama.cpp itself aborts the process);
- a server that dies mid-answer makes llama.cpp abort inside a worker thread, where nothing can
  be unwound: the process then prints one line naming the servers and exits with status 1.

RPC traffic is neither authenticated nor encrypted, as llama.cpp's documentation warns: run
rpc-server only on a trusted network, or through a tunnel.
"""

from __future__ import annotations

import ctypes
import os
import re
import socket
import struct
import sys
from collections.abc import Sequence
from functools import cache

from clm_local.errors import ClmError
from clm_local.runtime import library

# The HELLO exchange of ggml-rpc.cpp (protocol 7): request | cmd u8 | size u64 | caps[24] |,
# reply | size u64 | major u8 | minor u8 | patch u8 | pad u8 | caps[24] |.
RPC_PROTOCOL_MAJOR = 7
RPC_CMD_HELLO = 14
RPC_CONN_CAPS_SIZE = 24
PROBE_TIMEOUT_SECONDS = 5.0


def parse_endpoints(text: str | Sequence[str]) -> list[str]:
    """`HOST:PORT[,HOST:PORT...]` (or a list of them) as a list of endpoints, each checked."""
    parts = text.split(",") if isinstance(text, str) else list(text)
    endpoints = [part.strip() for part in parts if part.strip()]
    if not endpoints:
        raise ClmError("--rpc needs at least one HOST:PORT")
    for endpoint in endpoints:
        host, _, port = endpoint.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ClmError(f"--rpc takes HOST:PORT with a port from 1 to 65535, got {endpoint!r}")
    if len(set(endpoints)) != len(endpoints):
        raise ClmError("--rpc lists the same server twice")
    return endpoints


def probe(endpoint: str, timeout: float = PROBE_TIMEOUT_SECONDS) -> None:
    """Connect and exchange HELLO as llama.cpp will, so that a bad server is an error, not an abort.

    IPv4 only, like llama.cpp's RPC client (it resolves names with gethostbyname).
    """
    host, _, port = endpoint.rpartition(":")
    try:
        address = socket.getaddrinfo(host, int(port), socket.AF_INET, socket.SOCK_STREAM)[0][4]
    except socket.gaierror as error:
        raise ClmError(f"cannot resolve the RPC server {endpoint} (IPv4): {error.strerror}") from None
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as connection:
        connection.settimeout(timeout)
        try:
            connection.connect(address)
        except OSError as error:
            raise ClmError(f"cannot reach the RPC server {endpoint}: {error.strerror or error}") from None
        try:
            connection.sendall(
                struct.pack("<BQ", RPC_CMD_HELLO, RPC_CONN_CAPS_SIZE) + bytes(RPC_CONN_CAPS_SIZE)
            )
            reply = _receive(connection, 8 + 4 + RPC_CONN_CAPS_SIZE)
        except TimeoutError:
            raise ClmError(
                f"the RPC server {endpoint} did not answer within {timeout:.0f} s "
                "(an rpc-server serves one client at a time: is another program using it?)"
            ) from None
        except OSError as error:
            raise ClmError(
                f"{endpoint} is not a llama.cpp rpc-server: it ended the HELLO exchange "
                f"({error.strerror or error})"
            ) from None
    size, major, minor = struct.unpack_from("<QBB", reply)
    if size != 4 + RPC_CONN_CAPS_SIZE:
        raise ClmError(f"{endpoint} is not a llama.cpp rpc-server: its answer to HELLO has the wrong size")
    if major != RPC_PROTOCOL_MAJOR:
        raise ClmError(
            f"the RPC server {endpoint} speaks protocol {major}.{minor}, this runtime "
            f"{RPC_PROTOCOL_MAJOR}.x: run `clm-local rpc-server` from the same clm-local version on that host"
        )


def _receive(connection: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = connection.recv(size - len(data))
        if not chunk:
            raise ConnectionResetError(0, "the connection closed")
        data += chunk
    return data


def rpc_devices(endpoints: Sequence[str]) -> list[int]:
    """The ggml devices of these servers, each probed first (device pointers as integers)."""
    ggml = library.ggml()
    if not library.supports_rpc():
        raise ClmError(f"this llama.cpp build has no RPC backend: {library.INSTALL_HINT}")
    add_server = library.rpc_add_server_function()
    devices: list[int] = []
    for endpoint in endpoints:
        probe(endpoint)
        registry = add_server(endpoint.encode())
        count = ggml.ggml_backend_reg_dev_count(registry) if registry else 0
        if not count:
            raise ClmError(f"the RPC server {endpoint} offers no device")
        devices += [ggml.ggml_backend_reg_dev_get(registry, i) for i in range(count)]
    _exit_cleanly_on_abort(tuple(endpoints))
    return devices


@cache
def _exit_cleanly_on_abort(endpoints: tuple[str, ...]) -> None:
    """Replace ggml's abort (a backtrace, then SIGABRT) by one line and exit status 1.

    Once a model runs through RPC, a server that stops makes ggml abort on its connection thread;
    the process cannot continue (its model's weights are gone), but it can say why.
    """
    listed = ", ".join(endpoints)

    @library.ABORT_CALLBACK
    def on_abort(message: bytes) -> None:
        lines = (message or b"").decode(errors="replace").strip().splitlines()
        reason = re.sub(r"^\S+:\d+: ", "", lines[-1]) if lines else "llama.cpp aborted"  # file:line:
        sys.stderr.write(
            f"clm-local: llama.cpp stopped ({reason}); a model loaded through RPC ({listed}) cannot "
            "go on once one of its servers stops or restarts\n"
        )
        sys.stderr.flush()
        os._exit(1)

    _exit_cleanly_on_abort.callback = on_abort  # type: ignore[attr-defined]  # keep it alive
    library.ggml().ggml_set_abort_callback(on_abort)


def device_array(devices: Sequence[int]) -> ctypes.Array[ctypes.c_void_p]:
    """A NULL-terminated `ggml_backend_dev_t *` for llama_model_params.devices."""
    return (ctypes.c_void_p * (len(devices) + 1))(*devices, None)
