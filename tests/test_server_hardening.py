"""What a client or a web page can send `clm-local serve`, and what it must never do to it.

Each case here stopped or stalled the server, or let another origin drive it, before the
hardening of issue 22: a lone surrogate killed the scheduler thread (every later request got
503), a long stop string stalled every slot, any Content-Type and any Host were served. After
each refusal the server must still answer a known greedy request with its known answer.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from collections.abc import Iterator

import httpx
import pytest
from server_process import CLI, ServerProcess, run_cli

CTX = 256
QUESTION = {
    "messages": [{"role": "user", "content": "What do bees make?"}],
    "temperature": 0,
    "max_tokens": 8,
}


@pytest.fixture(scope="module")
def server() -> Iterator[ServerProcess]:
    process = ServerProcess("--ctx", str(CTX), "--parallel", "2", "--allowed-host", "proxy.example")
    yield process
    assert process.stop() == 0, process.errors()


@pytest.fixture(scope="module")
def known_answer(server: ServerProcess) -> str:
    return post(server, "/v1/chat/completions", QUESTION).json()["choices"][0]["message"]["content"]


def post(server: ServerProcess, path: str, body: object, **headers: str) -> httpx.Response:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    return httpx.post(
        server.url + path, content=data, headers={"Content-Type": "application/json", **headers}, timeout=120
    )


def still_serves(server: ServerProcess, known_answer: str) -> None:
    reply = post(server, "/v1/chat/completions", QUESTION)
    assert reply.status_code == 200, reply.text
    assert reply.json()["choices"][0]["message"]["content"] == known_answer
    assert httpx.get(server.url + "/health").json()["status"] == "ok"


def error_of(reply: httpx.Response, status: int) -> str:
    assert reply.status_code == status, reply.text
    error = reply.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    return error["message"]


# -- bodies ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("/v1/completions", {"prompt": "\ud800 hi"}, "prompt"),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "a\udfffb"}]},
         "messages[0].content"),
        ("/v1/chat/completions",
         {"messages": [{"role": "user", "content": [{"type": "text", "text": "\ud83d"}]}]},
         "messages[0].content"),
        ("/v1/completions", {"prompt": "hi", "stop": ["\udc00"]}, "stop"),
    ],
)  # fmt: skip
def test_lone_surrogates_are_a_400_naming_the_field(server, known_answer, path, body, field) -> None:
    message = error_of(post(server, path, body), 400)
    assert field in message and "not valid Unicode" in message
    still_serves(server, known_answer)


@pytest.mark.parametrize(
    ("body", "says"),
    [
        ({"prompt": "hi", "stop": ["x" * 200_000]}, "1 to 512 characters"),
        ({"prompt": "hi", "stop": ["a", "b", "c", "d", "e"]}, "up to 4"),
        ({"prompt": "hi", "stop": [""]}, "1 to 512 characters"),
        ({"prompt": "hi", "top_k": 10**20}, "'top_k' must be between"),
        ({"prompt": "hi", "seed": -1}, "'seed' must be between"),
        ({"prompt": "hi", "max_tokens": 10**30}, "'max_tokens' must be between"),
        ({"prompt": "hi", "mode": ["embed"]}, "'mode' must be a string"),
        ({"prompt": "hi", "alpha": "1"}, "'alpha' must be a finite number"),
        ({"prompt": ["a", "b"]}, "'prompt' must be a non-empty string"),
        ({"messages": [{"role": "user", "content": [{"type": "text", "text": 5}]}]}, "only text parts"),
    ],
)
def test_fields_outside_their_type_are_a_400(server, known_answer, body, says) -> None:
    path = "/v1/chat/completions" if "messages" in body else "/v1/completions"
    assert says in error_of(post(server, path, body), 400)
    still_serves(server, known_answer)


@pytest.mark.parametrize(
    ("raw", "says"),
    [
        (b"[" * 100_000 + b"]" * 100_000, "deeper than 32"),
        (b'{"prompt": "hi", "x": ' + b"[" * 40 + b"]" * 40 + b"}", "deeper than 32"),
        (b'{"prompt": "hi", "n": ' + b"9" * 5000 + b"}", "not valid JSON"),
        (b'{"prompt": "hi", "temperature": 1e999}', "'temperature' must be a finite number"),
        (b'{"prompt": "hi", "temperature": NaN}', "not valid JSON"),
        (b'{"prompt": "hi", "temperature": Infinity}', "not valid JSON"),
        (b'{"prompt": "\xff\xfe"}', "not valid JSON"),
    ],
)
def test_hostile_json_is_a_400(server, known_answer, raw, says) -> None:
    assert says in error_of(post(server, "/v1/completions", raw), 400)
    still_serves(server, known_answer)


def test_a_stop_string_is_cut_across_tokens_and_the_answer_goes_on_for_others(server, known_answer) -> None:
    whole = post(server, "/v1/completions", {"prompt": "1, 2, 3, 4,", "temperature": 0, "max_tokens": 12})
    text = whole.json()["choices"][0]["text"]
    stop = text[3:7]
    body = {"prompt": "1, 2, 3, 4,", "temperature": 0, "max_tokens": 12, "stop": [stop, "x" * 512]}
    cut = post(server, "/v1/completions", body)
    assert cut.json()["choices"][0]["text"] == text[: text.find(stop)]
    assert cut.json()["choices"][0]["finish_reason"] == "stop"
    still_serves(server, known_answer)


# -- who may ask ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "content_type", ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data", ""]
)
def test_a_post_that_is_not_declared_json_is_refused(server, content_type) -> None:
    """What a page of another origin can send without a preflight (a form, a no-cors fetch)."""
    reply = httpx.post(server.url + "/v1/completions", content=json.dumps({"prompt": "hi"}),
                       headers={"Content-Type": content_type})  # fmt: skip
    assert "Content-Type: application/json" in error_of(reply, 415)


@pytest.mark.parametrize(
    "host", ["evil.example", "evil.example:8080", "127.0.0.1.nip.io", "localhost.evil.example"]
)
def test_a_host_that_is_not_loopback_or_allowed_is_refused(server, host) -> None:
    """DNS rebinding: a page of evil.example whose name now points at 127.0.0.1."""
    for method, path in (("GET", "/"), ("GET", "/v1/models"), ("POST", "/v1/completions")):
        headers = {"Host": host, "Content-Type": "application/json"}
        reply = httpx.request(method, server.url + path, headers=headers,
                              content=b'{"prompt": "hi", "max_tokens": 1}')  # fmt: skip
        assert "is not allowed" in error_of(reply, 403)


@pytest.mark.parametrize("host", ["localhost", "LOCALHOST:1234", "127.0.0.1", "[::1]:9", "proxy.example"])
def test_loopback_and_allowed_hosts_are_served(server, host) -> None:
    assert httpx.get(server.url + "/v1/models", headers={"Host": host}).status_code == 200


def test_no_cors_headers_by_default(server) -> None:
    preflight = httpx.options(
        server.url + "/v1/chat/completions",
        headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST",
                 "Access-Control-Request-Headers": "content-type"},
    )  # fmt: skip
    assert "access-control-allow-origin" not in preflight.headers
    reply = httpx.get(server.url + "/v1/models", headers={"Origin": "https://evil.example"})
    assert "access-control-allow-origin" not in reply.headers


def test_cors_origin_and_api_key_from_the_environment() -> None:
    environment = os.environ | {"CLM_API_KEY": "secret-from-env"}
    process = ServerProcess(
        "--ctx", "64", "--parallel", "1", "--cors-origin", "https://ui.example", env=environment
    )
    try:
        models = process.url + "/v1/models"
        assert httpx.get(models).status_code == 401
        assert httpx.get(models, headers={"Authorization": "Bearer secret-from-env"}).status_code == 200
        assert "secret-from-env" not in " ".join(process.process.args)

        def preflight(origin: str) -> httpx.Response:
            return httpx.options(process.url + "/v1/chat/completions", headers={
                "Origin": origin, "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "authorization, content-type"})  # fmt: skip

        allowed = preflight("https://ui.example")
        assert allowed.status_code == 200
        assert allowed.headers["access-control-allow-origin"] == "https://ui.example"
        refused = preflight("https://evil.example")
        assert refused.headers.get("access-control-allow-origin") != "https://evil.example"
    finally:
        assert process.stop() == 0, process.errors()


# -- options at start -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--port", "99999"], "--port must be between 0 and 65535"),
        (["--port", "-5"], "--port must be between 0 and 65535"),
        (["--api-key", ""], "--api-key (or CLM_API_KEY) is empty"),
        (["--parallel", "0"], "--parallel must be at least 1"),
        (["--ctx", "1"], "--ctx must be at least 2"),
        (["--queue", "-1"], "--queue must be at least 0"),
        (["--ctx", "512", "--kv-size", "100"], "--kv-size (100) must hold"),
    ],
)
def test_bad_options_are_one_line_before_the_model_loads(args, says) -> None:
    # a model path that does not exist: the option must be refused before anyone looks at it
    result = run_cli("serve", "/nonexistent/model.gguf", *args, timeout=60)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [f"error: {result.stderr.strip().removeprefix('error: ')}"]
    assert says in result.stderr


def test_a_port_in_use_is_said_before_the_model_loads() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_cli("serve", "/nonexistent/model.gguf", "--port", str(port), timeout=60)
    assert result.returncode == 1
    assert len(result.stderr.strip().splitlines()) == 1
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr and "in use" in result.stderr


def test_an_empty_api_key_in_the_environment_is_an_error() -> None:
    result = subprocess.run([*CLI, "serve", "--port", "0"], capture_output=True, text=True, timeout=60,
                            env=os.environ | {"CLM_API_KEY": ""})  # fmt: skip
    assert result.returncode == 1 and "is empty" in result.stderr


# -- a scheduler that dies anyway -----------------------------------------------------------------

DYING_SERVER = textwrap.dedent(
    """
    import sys
    from clm_local.server.scheduler import Scheduler

    def broken(self):  # a bug in the loop itself, outside any one request's handling
        if any(slot.job for slot in self._slots):
            raise RuntimeError("injected scheduler bug")

    Scheduler._drop_abandoned = broken
    from clm_local.cli.main import run
    sys.argv = ["clm-local", "serve", "--port", "0", "--threads", "1", "--ctx", "64", "--parallel", "1"]
    run()
    """
)


def test_a_dead_scheduler_ends_the_process_with_the_reason() -> None:
    process = subprocess.Popen([sys.executable, "-c", DYING_SERVER], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        url = process.stdout.readline().removeprefix("clm-local serving on ").strip().rstrip("/")
        reply = httpx.post(url + "/v1/completions", json={"prompt": "hi", "max_tokens": 4}, timeout=60)
        assert reply.status_code == 503
        assert process.wait(60) == 1
        errors = process.stderr.read()
        assert "injected scheduler bug" in errors
        assert errors.strip().splitlines()[-1].startswith("error: the scheduler stopped (RuntimeError")
    finally:
        process.kill()
        process.wait()
