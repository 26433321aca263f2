"""`clm-local serve`: the OpenAI-compatible server and the web page with the alpha dial.

The work lives in clm_local.server; this module maps options to `serve`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer
from clm_local.cli.options import Rpc, Threads, model_file


def register(app: typer.Typer) -> None:
    """Add `serve` to the app."""
    app.command()(serve)


def serve(
    model: Annotated[
        Path | None,
        typer.Argument(help="A CLM or plain GGUF (default: the embedded default model).", show_default=False),
    ] = None,
    host: Annotated[str, typer.Option(help="Address to listen on (0.0.0.0: every interface).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on (0: any free port).")] = 8080,
    parallel: Annotated[
        int, typer.Option(help="Requests decoded together, one forward pass a step (slots).")
    ] = 4,
    ctx: Annotated[
        int, typer.Option("--ctx", help="The most tokens one request may use: prompt + answer.")
    ] = 4096,
    kv_size: Annotated[
        int | None,
        typer.Option(
            help="KV-cache positions shared by all slots (default: parallel x ctx). A request reserves "
            "prompt + max_tokens (at most --ctx, or the pool divided by its sequences) for each of its "
            "sequences: two in logits mode at an alpha other than 0 and 1, else one. One that does not fit "
            "waits for others to finish. The cache's memory is this many positions whatever the requests "
            "(about 23 KiB each for the default model: 381 MiB at the defaults).",
            show_default=False,
        ),
    ] = None,
    threads: Threads = None,
    api_key: Annotated[
        str | None,
        typer.Option(
            help="Require `Authorization: Bearer KEY` on the API (or set CLM_API_KEY, which `ps` does not "
            "show).",
            envvar="CLM_API_KEY",
            show_default=False,
            show_envvar=False,
        ),
    ] = None,
    mode: Annotated[
        str | None,
        typer.Option(help="Default mode, logits or embed (default: the file's).", show_default=False),
    ] = None,
    queue: Annotated[int, typer.Option(help="Requests that may wait for a slot before 503.")] = 16,
    prefill_chunk: Annotated[
        int,
        typer.Option(
            help="Prompt tokens (times sequences) read per step beside the answers in progress: larger reads "
            "prompts faster, smaller keeps the other answers flowing.",
        ),
    ] = 128,
    allowed_host: Annotated[
        list[str] | None,
        typer.Option(
            help="Also answer requests for this Host name (a proxy, host.docker.internal); repeatable. "
            "On a loopback address only localhost, 127.0.0.1 and [::1] are answered otherwise.",
            show_default=False,
        ),
    ] = None,
    cors_origin: Annotated[
        list[str] | None,
        typer.Option(
            help="Let web pages of this origin (https://example.org) call the API; repeatable. "
            "None by default: only the server's own page.",
            show_default=False,
        ),
    ] = None,
    rpc: Rpc = None,
    data_dir: Annotated[
        Path | None,
        typer.Option(
            help="Where the Teach page's preference pairs and trained dials go (a sub-folder per base "
            "model). Default: $XDG_DATA_HOME/clm-local, else ~/.local/share/clm-local.",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Serve the model over HTTP: OpenAI's API with an `alpha` field, and a web page at /."""
    from clm_local.errors import ClmError
    from clm_local.runtime.model import check_mode

    if mode is not None:
        check_mode(mode)
    if api_key is None and os.environ.get("CLM_API_KEY") == "":  # typer reads an empty variable as unset
        api_key = ""
    if api_key is not None and not api_key.strip():
        raise ClmError("--api-key (or CLM_API_KEY) is empty: give a key, or leave both unset for no key")
    if kv_size is not None and kv_size < ctx:
        raise ClmError(f"--kv-size ({kv_size}) must hold at least one request of --ctx ({ctx}) positions")
    from clm_local.runtime.rpc import parse_endpoints
    from clm_local.server import serve as run_server

    endpoints = parse_endpoints(rpc) if rpc is not None else []

    path = None if model is None else model_file(model)
    run_server(
        path, host=host, port=port, parallel=parallel, ctx=ctx, kv_size=kv_size, threads=threads,
        api_key=api_key, mode=mode, max_queue=queue, prefill_chunk=prefill_chunk,
        allowed_hosts=allowed_host or (),
        cors_origins=cors_origin or (), rpc=endpoints, data_dir=data_dir,
    )  # fmt: skip
