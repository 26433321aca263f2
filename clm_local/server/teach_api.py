"""The teach routes: /v1/clm/preferences, /v1/clm/train, /v1/clm/dials (see docs/teach.md).

Every call goes to the Teacher in a worker thread (an append waits for fsync, a start reads the
preference file, a switch loads a model), so the event loop keeps serving answers meanwhile.
The routes run under the app's rules like the OpenAI ones: the Host check and the JSON
Content-Type of POSTs (RequestGuard), the API key, bounded bodies, errors in OpenAI's shape.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from clm_local.server.openai_api import ApiError
from clm_local.teach.teacher import Teacher, TeachError

STATUS = {
    "invalid": 400,
    "not_found": 404,
    "conflict": 409,
    "storage": 500,
    "load_failed": 500,
    "storage_full": 507,
}
KINDS = {404: "not_found_error", 409: "conflict_error"}


def teach_routes(
    teacher: Teacher,
    check_key: Callable[[Request], None],
    json_body: Callable[[Request], Awaitable[dict[str, Any]]],
) -> list[Route]:
    """The routes, checking the key with `check_key` and reading bodies with `json_body` (the app's)."""

    async def call(method: Callable[..., dict[str, Any]], *args: Any, status: int = 200) -> Response:
        try:
            result = await asyncio.to_thread(method, *args)
        except TeachError as error:
            code = STATUS.get(error.kind, 500)
            kind = KINDS.get(code, "server_error" if code >= 500 else "invalid_request_error")
            raise ApiError(code, str(error), param=error.param, kind=kind) from None
        return JSONResponse(result, status_code=status)

    async def body_or_empty(request: Request) -> dict[str, Any]:
        """The JSON body; an empty one counts as `{}` (curl -X POST without -d)."""
        if request.headers.get("content-length") == "0":
            return {}
        return await json_body(request)

    async def preferences(request: Request) -> Response:
        check_key(request)
        if request.method == "GET":
            return await call(teacher.preferences)
        return await call(teacher.add_pair, await json_body(request), status=201)

    async def train(request: Request) -> Response:
        check_key(request)
        if request.method == "GET":
            return await call(teacher.status)
        if request.method == "DELETE":
            return await call(teacher.cancel)
        return await call(teacher.start_training, await body_or_empty(request), status=202)

    async def dials(request: Request) -> Response:
        check_key(request)
        return await call(teacher.dials)

    async def active(request: Request) -> Response:
        check_key(request)
        body = await json_body(request)
        if "name" not in body:
            raise ApiError(400, "'name' is required: a dial's name, or null for the model served at start",
                           param="name")  # fmt: skip
        return await call(teacher.activate, body["name"])

    return [
        Route("/v1/clm/preferences", preferences, methods=["GET", "POST"]),
        Route("/v1/clm/train", train, methods=["GET", "POST", "DELETE"]),
        Route("/v1/clm/dials", dials, methods=["GET"]),
        Route("/v1/clm/dials/active", active, methods=["POST"]),
    ]
