"""An OpenAI-compatible HTTP server with alpha per request, and a web page with the dial.

- `create_app(model, ...)`: the ASGI app (Starlette), to run under any ASGI server; its lifespan
  loads the model and starts the scheduler;
- `serve(model, ...)`: load the model, then serve with uvicorn until SIGINT or SIGTERM
  (what `clm-local serve` runs).

Many requests, each with its own alpha and mode, share every llama_decode (see scheduler.py).
Needs the `serve` extra: `pip install "clm-local[serve]"`.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

from clm_local.errors import ClmError
from clm_local.runtime.model import check_mode

try:
    from starlette.applications import Starlette
except ImportError as missing:  # pragma: no cover - depends on the installed extras
    raise ClmError(f"the server needs the serve extra: pip install 'clm-local[serve]' ({missing})") from None

from clm_local.server.app import build_app
from clm_local.server.scheduler import Scheduler

GRACE_SECONDS = 5  # on SIGINT/SIGTERM, in-flight requests get this long to finish

__all__ = ["create_app", "serve"]


def create_app(
    model: str | Path | None = None,
    *,
    parallel: int = 4,
    ctx: int = 4096,
    threads: int | None = None,
    api_key: str | None = None,
    mode: str | None = None,
    max_queue: int = 16,
    prefill_chunk: int = 128,
) -> Starlette:
    """The ASGI app serving `model` (default: the embedded default model).

    parallel: requests decoded together (slots); ctx: context of each request, in tokens;
    mode: the default for requests that do not say (default: the file's); max_queue: requests
    waiting beyond the slots before 503; prefill_chunk: prompt tokens decoded per step.
    The model is loaded when the app starts (or call `app.state.scheduler.start()` first).
    """
    if mode is not None:
        check_mode(mode)
    if model is None:
        from clm_local import default_model

        model = default_model.default_model_path()
    scheduler = Scheduler(
        model,
        parallel=parallel,
        n_ctx=ctx,
        n_threads=threads,
        max_queue=max_queue,
        prefill_chunk=prefill_chunk,
    )
    return build_app(scheduler, api_key=api_key, default_mode=mode)


def serve(
    model: str | Path | None = None,
    *,
    host: str = "127.0.0.1",
    port: int = 8080,
    ready: Callable[[str], None] = lambda url: print(f"clm-local serving on {url}", flush=True),
    **settings: int | str | None,
) -> None:
    """Load the model (ClmError if it cannot be), then serve until SIGINT or SIGTERM.

    settings are create_app's; port 0 picks a free port. `ready` receives the URL once the
    server listens.
    """
    import uvicorn

    app = create_app(model, **settings)  # type: ignore[arg-type]
    app.state.scheduler.start()  # a model that does not load fails here, before listening
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level="warning",
        access_log=False,
        timeout_graceful_shutdown=GRACE_SECONDS,
    )

    class Server(uvicorn.Server):
        async def startup(self, sockets: list | None = None) -> None:
            await super().startup(sockets)
            if self.started:
                bound = self.servers[0].sockets[0].getsockname()
                name = f"[{bound[0]}]" if ":" in bound[0] else bound[0]
                ready(f"http://{name}:{bound[1]}/")

    server = Server(config)
    try:
        with _stop_signals_end_the_run():
            server.run()
    finally:
        app.state.scheduler.stop()
    if not server.started:
        raise ClmError(f"could not listen on {host}:{port} (see the line above)")


@contextlib.contextmanager
def _stop_signals_end_the_run() -> Iterator[None]:
    """SIGINT and SIGTERM stop uvicorn gracefully; afterwards uvicorn raises the signal again for
    the handler it found. Finding this no-op one, `serve` returns normally: exit status 0."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, lambda *_: None) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
