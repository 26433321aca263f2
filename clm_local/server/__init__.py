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
import ipaddress
import signal
import socket
import sys
import threading
from collections.abc import Callable, Collection, Iterator, Sequence
from pathlib import Path

from clm_local.errors import ClmError
from clm_local.runtime.model import check_mode

try:
    from starlette.applications import Starlette
except ImportError as missing:  # pragma: no cover - depends on the installed extras
    raise ClmError(f"the server needs the serve extra: pip install 'clm-local[serve]' ({missing})") from None

from clm_local.server.app import build_app
from clm_local.server.protocol import DeadlineH11Protocol
from clm_local.server.scheduler import Scheduler
from clm_local.teach.folders import default_data_dir
from clm_local.teach.settings import TeachSettings, settings_from_environment

GRACE_SECONDS = 5  # on SIGINT/SIGTERM, in-flight requests get this long to finish
# uvicorn's own limit, a backstop for a flood: requests beyond the slots and queue get the
# scheduler's 503 in OpenAI's shape long before; idle sockets are closed by protocol.py's deadlines
MAX_CONNECTIONS = 512

__all__ = ["create_app", "serve"]


def create_app(
    model: str | Path | None = None,
    *,
    parallel: int = 4,
    ctx: int = 4096,
    kv_size: int | None = None,
    threads: int | None = None,
    api_key: str | None = None,
    mode: str | None = None,
    max_queue: int = 16,
    prefill_chunk: int = 128,
    allowed_hosts: Collection[str] | None = (),
    cors_origins: Collection[str] = (),
    on_death: Callable[[str], None] | None = None,
    rpc: Sequence[str] = (),
    data_dir: str | Path | None = None,
    teach_settings: TeachSettings | None = None,
) -> Starlette:
    """The ASGI app serving `model` (default: the embedded default model).

    parallel: requests decoded together (slots); ctx: the most positions one request may use
    (prompt + answer); kv_size: KV-cache positions shared by all slots (default parallel * ctx;
    a logits-mode request at an alpha other than 0 and 1 uses two sequences); mode: the default
    for requests that do not say (default: the file's); max_queue: requests waiting beyond the
    slots before 503; prefill_chunk: prompt tokens decoded per step; allowed_hosts and
    cors_origins: see app.build_app; on_death: told why, should the scheduler thread die; rpc:
    llama.cpp rpc-servers ("HOST:PORT") that hold the model's layers; data_dir: where the teach
    routes keep preference pairs and trained dials (default: teach.folders.default_data_dir();
    nothing is written there until a pair is posted); teach_settings: how they train (default:
    TeachSettings with CLM_LOCAL_TEACH_SETTINGS's overrides).
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
        kv_size=kv_size,
        n_threads=threads,
        max_queue=max_queue,
        prefill_chunk=prefill_chunk,
        on_death=on_death,
        rpc=rpc,
    )
    return build_app(
        scheduler,
        api_key=api_key,
        default_mode=mode,
        allowed_hosts=allowed_hosts,
        cors_origins=cors_origins,
        data_dir=Path(data_dir).expanduser() if data_dir is not None else default_data_dir(),
        teach_settings=teach_settings or settings_from_environment(),
    )


def serve(
    model: str | Path | None = None,
    *,
    host: str = "127.0.0.1",
    port: int = 8080,
    allowed_hosts: Collection[str] = (),
    ready: Callable[[str], None] = lambda url: print(f"clm-local serving on {url}", flush=True),
    **settings: object,
) -> None:
    """Listen, load the model, then serve until SIGINT or SIGTERM (ClmError if any step fails).

    The port is bound before the model loads, so a port in use is said at once. On a loopback
    address only loopback Host names and `allowed_hosts` are answered; on any other address the
    user exposed the server on purpose: any Host is answered, and a missing API key is warned of.
    settings are create_app's; port 0 picks a free port. `ready` receives the URL once the
    server listens. Should the scheduler thread die, serving stops and ClmError says why.
    """
    import uvicorn

    listener = _listen(host, port)
    loopback = ipaddress.ip_address(listener.getsockname()[0].split("%")[0]).is_loopback
    if not loopback and not settings.get("api_key"):
        print(
            f"warning: listening on {host}, reachable from other machines, without an API key: "
            "anyone who reaches it can use it (give --api-key or CLM_API_KEY)",
            file=sys.stderr,
            flush=True,
        )
    died: list[str] = []
    server: uvicorn.Server | None = None

    def on_death(reason: str) -> None:
        died.append(reason)
        if server is not None:
            server.should_exit = True

    try:
        app = create_app(
            model,
            allowed_hosts=allowed_hosts if loopback else None,
            on_death=on_death,
            **settings,  # type: ignore[arg-type]
        )
        app.state.scheduler.start()  # a model that does not load fails here, before serving
    except BaseException:
        listener.close()
        raise
    config = uvicorn.Config(
        app,
        log_level="warning",
        access_log=False,
        timeout_graceful_shutdown=GRACE_SECONDS,
        limit_concurrency=MAX_CONNECTIONS,
        http=DeadlineH11Protocol,
    )

    class Server(uvicorn.Server):
        async def startup(self, sockets: list | None = None) -> None:
            await super().startup(sockets)
            if self.started:
                bound = listener.getsockname()
                name = f"[{bound[0]}]" if ":" in bound[0] else bound[0]
                ready(f"http://{name}:{bound[1]}/")
                if app.state.teacher is not None:
                    folder = app.state.teacher.data_dir
                    print(
                        f"clm-local: preference pairs and trained dials go to {folder}",
                        file=sys.stderr,
                        flush=True,
                    )

    server = Server(config)
    try:
        with _stop_signals_end_the_run():
            server.run(sockets=[listener])
    finally:
        if app.state.teacher is not None:
            app.state.teacher.shutdown()  # a training process does not outlive its server
        app.state.serving.stop()
        listener.close()
    if died:
        raise ClmError(f"the scheduler stopped ({died[0]}); the server exits so that it can be restarted")
    if not server.started:
        raise ClmError(f"could not serve on {host}:{port} (see the line above)")


def _listen(host: str, port: int) -> socket.socket:
    """A socket bound to host:port and listening, or ClmError saying why not."""
    if not 0 <= port <= 65535:
        raise ClmError(f"--port must be between 0 and 65535, got {port}")
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
    except (OSError, UnicodeError) as error:
        raise ClmError(f"cannot listen on {host!r}: {error}") from None
    listener = socket.socket(family, kind, proto)
    try:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(address)
        listener.listen(2048)
    except OSError as error:
        listener.close()
        raise ClmError(f"cannot listen on {host}:{port}: {error.strerror or error}") from None
    listener.set_inheritable(True)
    return listener


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
