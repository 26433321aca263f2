"""The HTTP side: a Starlette app with the OpenAI routes, /health, /metrics and the web page.

Handlers never touch the model. They parse the body, hand a Job to the scheduler and relay its
events: as one JSON answer, or as server-sent events ending in `data: [DONE]`. A client that goes
away cancels its job, and the scheduler frees the slot at its next step.

Who may ask (`RequestGuard`, before any handler): a server on a loopback address answers only
requests whose Host is a loopback name or one the user allowed, so a web page cannot reach it by
DNS rebinding; a POST must say `Content-Type: application/json`, which a page from another origin
cannot send without a CORS preflight, and preflights are answered only for `cors_origins`. Bodies
are bounded in size, time and JSON nesting; a 500 names an error id, never the exception.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hmac
import json
import sys
import threading
import traceback
import uuid
from collections.abc import AsyncIterator, Callable, Collection
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import FileResponse, JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from clm_local.errors import ClmError
from clm_local.server.openai_api import (
    ApiError,
    Reply,
    include_usage,
    parse_chat,
    parse_completion,
    usage,
)
from clm_local.server.scheduler import Failed, Finished, Job, Piece, QueueFull, Scheduler
from clm_local.server.serving import Serving
from clm_local.server.teach_api import teach_routes
from clm_local.teach.settings import TeachSettings
from clm_local.teach.teacher import Teacher

MAX_BODY_BYTES = 1 << 20
MAX_JSON_DEPTH = 32  # an OpenAI body nests 4 deep (messages[i].content[j].text)
BODY_SECONDS = 30  # a client that has not sent its whole body by then is answered 408
SEND_SECONDS = 60  # a streamed answer whose client reads nothing for this long is dropped
RETRY_AFTER_SECONDS = 2
DISCONNECT_POLL_SECONDS = 0.5  # how often a waiting non-streaming handler looks for a gone client
WEB_DIR = Path(__file__).with_name("web")
LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "::1")


def build_app(
    scheduler: Scheduler,
    *,
    api_key: str | None = None,
    default_mode: str | None = None,
    allowed_hosts: Collection[str] | None = (),
    cors_origins: Collection[str] = (),
    data_dir: Path | None = None,
    teach_settings: TeachSettings | None = None,
) -> Starlette:
    """The app around a scheduler; its lifespan starts the scheduler (if not yet) and stops it.

    allowed_hosts: Host names answered besides the loopback ones; None answers any Host (a
    server the user exposed on purpose). cors_origins: web origins allowed to call the API from
    their pages (none by default: only the server's own page). data_dir: the teach routes'
    folder (/v1/clm/..., clm_local.teach; none without it), teach_settings: their training's.
    The served model may be switched (`app.state.serving`): each handler asks `serving` for the
    model of now.
    """
    if api_key is not None and not api_key.strip():
        raise ClmError("the API key is empty: give a non-empty key, or none for no authentication")
    serving = Serving(scheduler, default_mode)
    teacher = None
    if data_dir is not None:
        teacher = Teacher(data_dir, scheduler.model_path, serving.switch, teach_settings)

    def check_key(request: Request) -> None:
        if api_key is None:
            return
        given = request.headers.get("authorization", "").removeprefix("Bearer ").strip()
        if not hmac.compare_digest(given.encode(), api_key.encode()):
            raise ApiError(
                401, "a valid API key is required (Authorization: Bearer KEY)", kind="invalid_api_key"
            )

    async def models(request: Request) -> Response:
        check_key(request)
        scheduler, defaults = serving.scheduler, serving.defaults
        info = scheduler.info
        entry = {
            "id": defaults.model_id,
            "object": "model",
            "created": int(Path(info.path).stat().st_mtime),
            "owned_by": "clm-local",
            "clm": {
                "is_clm": info.is_clm,
                "alpha_default": defaults.alpha,
                "mode_default": defaults.mode,
                "n_ctx": defaults.n_ctx,
                "parallel": scheduler.parallel,
            },
        }
        return JSONResponse({"object": "list", "data": [entry]})

    async def chat_completions(request: Request) -> Response:
        check_key(request)
        body = await _json_body(request)
        scheduler, defaults = serving.scheduler, serving.defaults
        generation, stream = parse_chat(body, defaults)
        if not scheduler.running:
            raise ApiError(503, "the server is not running", kind="server_error")
        try:  # rendered here, in a worker thread: a long conversation holds up no other request
            text, add_special = await asyncio.to_thread(scheduler.render, generation.messages)
        except ClmError as error:
            raise ApiError(400, str(error), param="messages") from None
        generation = dataclasses.replace(generation, messages=None, prompt=text, add_special=add_special)
        return await _serve(request, serving, Reply(True, generation, defaults), generation, stream, body)

    async def completions(request: Request) -> Response:
        check_key(request)
        body = await _json_body(request)
        defaults = serving.defaults
        generation, stream = parse_completion(body, defaults)
        return await _serve(request, serving, Reply(False, generation, defaults), generation, stream, body)

    async def health(request: Request) -> Response:
        scheduler = serving.scheduler
        in_flight, waiting = scheduler.load()
        state = {
            "status": "ok" if scheduler.running else "failed" if scheduler.failure else "stopped",
            "slots": scheduler.parallel,
            "slots_busy": in_flight - waiting,
            "waiting": waiting,
            "model": scheduler.model_path.name,
        }
        if scheduler.failure:
            state["error"] = scheduler.failure
        return JSONResponse(state, status_code=200 if scheduler.running else 503)

    async def metrics(request: Request) -> Response:
        check_key(request)
        return PlainTextResponse(_prometheus(serving))

    async def page(request: Request) -> Response:
        return FileResponse(WEB_DIR / "index.html")

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await asyncio.to_thread(serving.scheduler.start)
        if teacher is not None:  # hash a plain base now, not at the first teach request
            threading.Thread(
                target=_quietly, args=(teacher.prepare,), name="clm-teach-prepare", daemon=True
            ).start()
        yield
        if teacher is not None:
            teacher.shutdown()
        await asyncio.to_thread(serving.stop)

    app = Starlette(
        routes=[
            Route("/", page),
            Route("/health", health),
            Route("/metrics", metrics),
            Route("/v1/models", models),
            Route("/v1/chat/completions", chat_completions, methods=["POST"]),
            Route("/v1/completions", completions, methods=["POST"]),
            *(teach_routes(teacher, check_key, _json_body) if teacher is not None else []),
            Mount("/static", StaticFiles(directory=WEB_DIR), name="static"),
        ],
        middleware=[
            Middleware(RequestGuard, allowed_hosts=allowed_hosts),
            *(
                [
                    Middleware(
                        CORSMiddleware,
                        allow_origins=list(cors_origins),
                        allow_methods=["GET", "POST", "DELETE"],
                        allow_headers=["authorization", "content-type"],
                    )
                ]
                if cors_origins
                else []
            ),
        ],  # fmt: skip
        exception_handlers={ApiError: _api_error, HTTPException: _http_error, Exception: _server_error},
        lifespan=lifespan,
    )
    app.state.scheduler = scheduler  # the model served at start (`serving.scheduler`: the one of now)
    app.state.serving = serving
    app.state.teacher = teacher
    return app


def _quietly(work: Callable[[], object]) -> None:
    """Run `work` in a background thread; a failure is said again by the request that needs it."""
    try:
        work()
    except Exception:  # noqa: BLE001
        pass


async def _serve(
    request: Request,
    serving: Serving,
    reply: Reply,
    generation: Any,
    stream: bool,
    body: dict[str, Any],
) -> Response:
    job = Job(generation, asyncio.get_running_loop())
    try:
        serving.submit(job)
    except QueueFull as full:
        raise ApiError(
            503, f"the server is busy ({full}); try again shortly", kind="server_overloaded",
            headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
        ) from None  # fmt: skip
    try:
        first = await _next_event(job, request)  # Started or Failed: decides the HTTP status
    except BaseException:
        job.cancel()
        raise
    if isinstance(first, Failed):
        raise ApiError(first.status, first.message, kind=_error_kind(first.status))
    if stream:
        return _JobStream(job, _event_stream(job, reply, include_usage(body)))
    text: list[str] = []
    try:
        while True:
            event = await _next_event(job, request)
            if isinstance(event, Piece):
                text.append(event.text)
            elif isinstance(event, Finished):
                counts = usage(event.prompt_tokens, event.completion_tokens)
                return JSONResponse(reply.whole("".join(text), event.finish_reason, counts))
            elif isinstance(event, Failed):
                raise ApiError(event.status, event.message, kind=_error_kind(event.status))
    finally:
        job.cancel()  # a no-op once finished; frees the slot if the handler is left early


async def _next_event(job: Job, request: Request) -> Any:
    """The job's next event; a client that disconnects meanwhile cancels the job."""
    while True:
        try:
            return await asyncio.wait_for(job.events.get(), DISCONNECT_POLL_SECONDS)
        except TimeoutError:
            if await request.is_disconnected():
                job.cancel()
                raise ApiError(499, "the client closed the connection") from None


class _JobStream(StreamingResponse):
    """Server-sent events of a job, which is cancelled when the response ends in any way (sent
    in full, or the client gone: then the next write fails)."""

    def __init__(self, job: Job, events: AsyncIterator[str]) -> None:
        headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        super().__init__(events, media_type="text/event-stream", headers=headers)
        self.job = job

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        async def send_or_give_up(message: Any) -> None:  # a client that never reads holds nothing
            await asyncio.wait_for(send(message), SEND_SECONDS)

        try:
            await super().__call__(scope, receive, send_or_give_up)
        except TimeoutError:
            pass  # the connection is dropped; the job is cancelled below
        finally:
            self.job.cancel()


async def _event_stream(job: Job, reply: Reply, with_usage: bool) -> AsyncIterator[str]:
    """OpenAI's chunks as server-sent events, then `data: [DONE]`."""
    yield _sse(reply.chunk(None, first=True))
    while True:
        event = await job.events.get()
        if isinstance(event, Piece):
            yield _sse(reply.chunk(event.text))
        elif isinstance(event, Finished):
            yield _sse(reply.chunk(None, event.finish_reason))
            if with_usage:
                yield _sse(reply.usage_chunk(usage(event.prompt_tokens, event.completion_tokens)))
            break
        elif isinstance(event, Failed):
            yield _sse(ApiError(event.status, event.message, kind=_error_kind(event.status)).body())
            break
    yield "data: [DONE]\n\n"


def _sse(payload: dict[str, Any]) -> str:
    return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"


async def _json_body(request: Request) -> dict[str, Any]:
    """The body as a JSON object: refused above MAX_BODY_BYTES before it is all read, when it
    takes longer than BODY_SECONDS to arrive, or nests deeper than MAX_JSON_DEPTH."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise ApiError(413, f"the body is larger than {MAX_BODY_BYTES} bytes")

    async def read() -> bytearray:
        data = bytearray()
        async for chunk in request.stream():
            data += chunk
            if len(data) > MAX_BODY_BYTES:
                raise ApiError(413, f"the body is larger than {MAX_BODY_BYTES} bytes")
        return data

    try:
        data = await asyncio.wait_for(read(), BODY_SECONDS)
    except TimeoutError:
        raise ApiError(408, f"the body did not arrive within {BODY_SECONDS} s") from None
    except ClientDisconnect:
        raise ApiError(499, "the client closed the connection") from None
    try:
        body = json.loads(data, parse_constant=_no_constant)
    except RecursionError:
        raise ApiError(400, f"the body nests JSON deeper than {MAX_JSON_DEPTH} levels") from None
    except ValueError as error:  # JSONDecodeError, bad UTF-8, NaN, an integer of thousands of digits
        raise ApiError(400, f"the body is not valid JSON: {_one_line(error)}") from None
    if not isinstance(body, dict):
        raise ApiError(400, "the body must be a JSON object")
    if _depth(body) > MAX_JSON_DEPTH:
        raise ApiError(400, f"the body nests JSON deeper than {MAX_JSON_DEPTH} levels")
    return body


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _depth(value: Any) -> int:
    """How deeply arrays and objects nest in a parsed JSON value (without recursion)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list):
            deepest = max(deepest, depth)
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, depth + 1) for child in children if isinstance(child, dict | list))
    return deepest


def _one_line(error: Exception) -> str:
    text = " ".join(str(error).split())
    return text if len(text) <= 200 else text[:200] + "..."


class RequestGuard:
    """ASGI middleware that refuses, before any handler runs, a request with a Host that is not
    allowed (DNS rebinding) and a POST whose body is not declared JSON (a cross-origin page's
    form or no-cors fetch)."""

    def __init__(self, app: Any, allowed_hosts: Collection[str] | None) -> None:
        self.app = app
        self.hosts = None if allowed_hosts is None else {*LOOPBACK_HOSTS, *map(str.lower, allowed_hosts)}

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            refusal = self._refusal(scope)
            if refusal is not None:
                await JSONResponse(refusal.body(), status_code=refusal.status)(scope, receive, send)
                return
        await self.app(scope, receive, send)

    def _refusal(self, scope: Any) -> ApiError | None:
        headers = {name: value for name, value in scope["headers"]}
        host = headers.get(b"host")
        if self.hosts is not None and host is not None:
            name = _host_name(host.decode("latin-1"))
            if name not in self.hosts:
                return ApiError(
                    403, f"Host {name!r} is not allowed: start the server with --allowed-host {name} "
                    "if you reach it by that name", kind="permission_error",
                )  # fmt: skip
        if scope["method"] == "POST":
            media_type = headers.get(b"content-type", b"").split(b";")[0].strip().lower()
            if media_type != b"application/json":
                return ApiError(415, "a POST body must be sent with Content-Type: application/json")
        return None


def _host_name(host: str) -> str:
    """The name of a Host header, without its port: `[::1]:8080` -> `::1`, `Localhost.` -> `localhost`."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1 : host.find("]")] if "]" in host else host
    return host.rsplit(":", 1)[0].rstrip(".") if host.count(":") == 1 else host.rstrip(".")


def _error_kind(status: int) -> str:
    return "server_error" if status >= 500 else "invalid_request_error"


async def _api_error(request: Request, error: Exception) -> Response:
    assert isinstance(error, ApiError)
    return JSONResponse(error.body(), status_code=error.status, headers=error.headers)


async def _http_error(request: Request, error: Exception) -> Response:
    assert isinstance(error, HTTPException)
    kind = "not_found_error" if error.status_code == 404 else "invalid_request_error"
    return JSONResponse(
        ApiError(error.status_code, str(error.detail), kind=kind).body(),
        status_code=error.status_code,
        headers=error.headers,
    )


async def _server_error(request: Request, error: Exception) -> Response:
    """A bug: the client gets an error id, the log the traceback under it."""
    error_id = uuid.uuid4().hex[:12]
    print(f"clm-local: internal error {error_id} in {request.method} {request.url.path}:", file=sys.stderr)
    traceback.print_exception(error)
    sys.stderr.flush()
    message = f"internal error {error_id} (the server's log has the details)"
    return JSONResponse(ApiError(500, message, kind="server_error").body(), status_code=500)


def _prometheus(serving: Serving) -> str:
    """The counters of every model served since the start, and the current model's gauges, in
    Prometheus' text format."""
    scheduler = serving.scheduler
    metrics = serving.metrics()
    in_flight, waiting = scheduler.load()
    rows = [  # (name, type, help, value)
        ("clm_decode_steps_total", "counter", "llama_decode calls of the scheduler", metrics.decode_steps),
        ("clm_decode_forward_passes_total", "counter", "forward passes (llama.cpp ubatches) of the steps",
         metrics.decode_forward_passes),
        ("clm_decode_max_forward_passes_per_step", "gauge", "most forward passes in one step",
         metrics.max_forward_passes_per_step),
        ("clm_decode_sequences_total", "counter", "sequences, summed over steps", metrics.decode_sequences),
        ("clm_decode_slots_total", "counter", "requests, summed over steps", metrics.decode_slots),
        ("clm_decode_tokens_total", "counter", "tokens, summed over steps", metrics.decode_tokens),
        ("clm_decode_steps_with_several_slots_total", "counter", "steps serving more than one request",
         metrics.steps_with_several_slots),
        ("clm_decode_max_sequences_per_step", "gauge", "most sequences in one step",
         metrics.max_sequences_per_step),
        ("clm_decode_max_slots_per_step", "gauge", "most requests in one step", metrics.max_slots_per_step),
        ("clm_requests_started_total", "counter", "requests that got a slot", metrics.requests_started),
        ("clm_requests_finished_total", "counter", "requests answered to the end", metrics.requests_finished),
        ("clm_requests_cancelled_total", "counter", "requests whose client left", metrics.requests_cancelled),
        ("clm_requests_failed_total", "counter", "requests refused or failed", metrics.requests_failed),
        ("clm_prompt_tokens_total", "counter", "prompt tokens decoded", metrics.prompt_tokens),
        ("clm_completion_tokens_total", "counter", "answer tokens generated", metrics.completion_tokens),
        ("clm_slots", "gauge", "parallel slots", scheduler.parallel),
        ("clm_slots_busy", "gauge", "slots serving a request", in_flight - waiting),
        ("clm_requests_waiting", "gauge", "requests waiting for a slot", waiting),
        ("clm_kv_cache_positions", "gauge", "KV-cache positions shared by the slots (--kv-size)",
         scheduler.kv_size),
        ("clm_kv_cache_reserved", "gauge", "KV-cache positions reserved by requests in slots",
         scheduler.kv_reserved),
    ]  # fmt: skip
    lines = []
    for name, kind, help_text, value in rows:
        lines += [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}", f"{name} {value}"]
    return "\n".join(lines) + "\n"
