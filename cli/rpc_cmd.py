"""`clm-local rpc-server`: lend this machine's device to a model loaded elsewhere with `--rpc`."""

from __future__ import annotations

import ipaddress
import os
import socket
import sys
from typing import Annotated

import typer

from clm_local.errors import ClmError

DEFAULT_PORT = 50052  # llama.cpp's rpc-server default


def register(app: typer.Typer) -> None:
    app.command("rpc-server")(rpc_server)


def rpc_server(
    host: Annotated[
        str, typer.Option(help="Address to listen on. Anything but loopback exposes this machine.")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = DEFAULT_PORT,
    threads: Annotated[
        int | None, typer.Option(help="CPU threads (default: llama.cpp's).", show_default=False)
    ] = None,
    cache: Annotated[
        bool, typer.Option(help="Keep received weights in a local file cache (llama.cpp's -c).")
    ] = False,
) -> None:
    """Run llama.cpp's rpc-server, built with the runtime: it computes the layers that a client
    started with `--rpc HOST:PORT` places on it. It serves one client at a time.

    RPC traffic is neither authenticated nor encrypted: listen only on a trusted network, or
    reach it through a tunnel (ssh -L).
    """
    from clm_local.runtime.build import RPC_SERVER_NAME, installed_library_dir

    try:
        address = ipaddress.IPv4Address(host)
    except ValueError:
        raise ClmError(f"--host takes an IPv4 address (rpc-server listens on IPv4), got {host!r}") from None
    if not 0 < port < 65536:
        raise ClmError(f"--port must be between 1 and 65535, got {port}")
    if threads is not None and threads < 1:
        raise ClmError(f"--threads must be at least 1, got {threads}")
    library_dir = installed_library_dir()
    binary = library_dir / RPC_SERVER_NAME if library_dir else None
    if binary is None or not binary.is_file():
        raise ClmError(
            "this runtime was built without llama.cpp's rpc-server: run `clm-local runtime install`"
        )
    _check_free(host, port)
    if not address.is_loopback:
        print(
            f"warning: listening on {host}: anyone who reaches this port can use this machine's "
            "memory and compute (RPC has no authentication); prefer a tunnel",
            file=sys.stderr,
        )
    arguments = [str(binary), "--host", host, "--port", str(port)]
    arguments += ["--threads", str(threads)] if threads else []
    arguments += ["--cache"] if cache else []
    sys.stdout.flush()
    os.execv(binary, arguments)  # signals (Ctrl-C) now reach llama.cpp's server directly


def _check_free(host: str, port: int) -> None:
    """Bind once to say 'port in use' in one line (rpc-server only says it failed to create a socket)."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((host, port))
    except OSError as error:
        raise ClmError(f"cannot listen on {host}:{port}: {error.strerror or error}") from None
