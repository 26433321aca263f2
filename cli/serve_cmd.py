"""`clm-local serve`: the OpenAI-compatible server and the web page with the alpha dial.

The work lives in clm_local.server; this module maps options to `serve`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


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
    parallel: Annotated[int, typer.Option(help="Requests decoded together in one batch (slots).")] = 4,
    ctx: Annotated[int, typer.Option("--ctx", help="Context of each request, in tokens.")] = 4096,
    threads: Annotated[
        int | None,
        typer.Option(
            help="CPU threads (default: all cores, fewer while other programs take some).", show_default=False
        ),
    ] = None,
    api_key: Annotated[
        str | None,
        typer.Option(help="Require `Authorization: Bearer KEY` on the API.", show_default=False),
    ] = None,
    mode: Annotated[
        str | None,
        typer.Option(help="Default mode, logits or embed (default: the file's).", show_default=False),
    ] = None,
    queue: Annotated[int, typer.Option(help="Requests that may wait for a slot before 503.")] = 16,
) -> None:
    """Serve the model over HTTP: OpenAI's API with an `alpha` field, and a web page at /."""
    from clm_local.runtime.model import check_mode

    if mode is not None:
        check_mode(mode)
    from clm_local.server import serve as run_server

    run_server(
        model, host=host, port=port, parallel=parallel, ctx=ctx, threads=threads, api_key=api_key,
        mode=mode, max_queue=queue,
    )  # fmt: skip
