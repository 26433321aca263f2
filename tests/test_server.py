"""`clm-local serve` through the official `openai` client and raw HTTP, on the default model.

The client is the judge of compatibility: models list, chat and text completions, streaming,
`extra_body` with alpha and mode. Greedy answers must equal `clm-local chat --temp 0`'s for the same
prompt and alpha. Then every kind of bad input, each refused in OpenAI's error shape with the
server still answering afterwards; a full server (503 + Retry-After), a client that goes away, a
model that does not load, and a clean stop on SIGTERM.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
from server_process import ServerProcess, run_cli, write_garbage

API_KEY = "test-key"
CTX = 512
QUESTION = "What is the capital of France?"
FAST = {"temperature": 0, "max_tokens": 12}


@pytest.fixture(scope="module")
def server() -> Iterator[ServerProcess]:
    process = ServerProcess("--ctx", str(CTX), "--parallel", "2", "--api-key", API_KEY)
    yield process
    assert process.stop() == 0, process.errors()


@pytest.fixture(scope="module")
def client(server: ServerProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.api, api_key=API_KEY, max_retries=0, timeout=120)


def model_id(client: openai.OpenAI) -> str:
    return client.models.list().data[0].id


def ask(client: openai.OpenAI, alpha: float | None = None, mode: str | None = None, **kwargs):
    extra = {k: v for k, v in (("alpha", alpha), ("mode", mode)) if v is not None}
    return client.chat.completions.create(
        model=model_id(client),
        messages=[{"role": "user", "content": QUESTION}],
        extra_body=extra,
        **(FAST | kwargs),
    )


def cli_answer(alpha: float, mode: str) -> str:
    result = run_cli(
        "chat", "--prompt", QUESTION, "--temp", "0", "--max-tokens", "12", "--threads", "1",
        "--ctx", str(CTX), "--alpha", str(alpha), "--mode", mode,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return result.stdout.removesuffix("\n")


# -- the openai client ----------------------------------------------------------------------------


def test_models_list(client: openai.OpenAI) -> None:
    models = client.models.list().data
    assert len(models) == 1
    assert models[0].id.startswith("SmolLM2-135M-Instruct")
    assert models[0].owned_by == "clm-local"


@pytest.mark.parametrize(("alpha", "mode"), [(0.0, "logits"), (1.0, "logits"), (1.0, "embed")])
def test_greedy_chat_equals_clm_local_chat(client: openai.OpenAI, alpha: float, mode: str) -> None:
    reply = ask(client, alpha, mode)
    assert reply.choices[0].message.content == cli_answer(alpha, mode)
    assert reply.model_extra["alpha"] == alpha and reply.model_extra["mode"] == mode
    assert reply.usage.completion_tokens <= 12
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens


def test_alpha_changes_the_answer_and_control_is_its_alias(client: openai.OpenAI) -> None:
    at_zero = ask(client, 0.0).choices[0].message.content
    at_three = ask(client, 3.0).choices[0].message.content
    assert at_zero != at_three
    via_control = client.chat.completions.create(
        model=model_id(client),
        messages=[{"role": "user", "content": QUESTION}],
        extra_body={"control": 3.0},
        **FAST,
    )
    assert via_control.choices[0].message.content == at_three
    assert via_control.model_extra["alpha"] == 3.0


def test_defaults_are_the_files(client: openai.OpenAI) -> None:
    reply = ask(client)
    assert reply.model_extra["alpha"] == 1.0 and reply.model_extra["mode"] == "logits"


def test_streaming_gives_the_same_text(client: openai.OpenAI) -> None:
    whole = ask(client, 1.0).choices[0].message.content
    chunks = list(ask(client, 1.0, stream=True, stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole
    assert chunks[0].choices[0].delta.role == "assistant"
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["length"] or finishes == ["stop"]
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0
    assert all(c.model_extra["alpha"] == 1.0 for c in chunks)


def test_stream_ends_with_done(server: ServerProcess) -> None:
    body = {"messages": [{"role": "user", "content": QUESTION}], "stream": True, **FAST}
    with httpx.stream(
        "POST", server.api + "/chat/completions", json=body, headers=auth(), timeout=120
    ) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        events = [line for line in response.iter_lines() if line]
    assert events[-1] == "data: [DONE]"
    assert all(line.startswith("data: ") for line in events)


def test_text_completion_and_stop_strings(client: openai.OpenAI) -> None:
    plain = client.completions.create(
        model=model_id(client), prompt="The three primary colours are", temperature=0, max_tokens=16
    )
    text = plain.choices[0].text
    assert text and plain.usage.completion_tokens > 0
    cut_at = text.strip()[3:6]  # a stop string inside the answer: the answer ends just before it
    stopped = client.completions.create(
        model=model_id(client), prompt="The three primary colours are", temperature=0, max_tokens=16,
        stop=[cut_at],
    )  # fmt: skip
    assert stopped.choices[0].text == text[: text.index(cut_at)]
    assert stopped.choices[0].finish_reason == "stop"
    streamed = client.completions.create(
        model=model_id(client), prompt="The three primary colours are", temperature=0, max_tokens=16,
        stop=[cut_at], stream=True,
    )  # fmt: skip
    assert "".join(c.choices[0].text for c in streamed) == stopped.choices[0].text


def test_a_seed_repeats_a_sampled_answer(client: openai.OpenAI) -> None:
    first, second = (ask(client, 1.0, temperature=1.0, seed=7).choices[0].message.content for _ in range(2))
    assert first == second


def test_health_and_metrics(server: ServerProcess) -> None:
    health = httpx.get(server.url + "/health").json()
    assert health["status"] == "ok" and health["slots"] == 2
    metrics = httpx.get(server.url + "/metrics", headers=auth()).text
    assert "clm_decode_max_slots_per_step" in metrics
    assert httpx.get(server.url + "/metrics").status_code == 401


# -- bad input: refused in OpenAI's shape, and the server goes on -------------------------------------


def auth(key: str = API_KEY) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def good_body(**fields) -> dict:
    return {"model": "any", "messages": [{"role": "user", "content": QUESTION}], **FAST, **fields}


BAD_REQUESTS = {
    "malformed JSON": (b'{"messages": [', 400),
    "a list, not an object": (b"[1, 2]", 400),
    "no messages": (json.dumps({"model": "any", "max_tokens": 2}).encode(), 400),
    "a message without content": (json.dumps(good_body(messages=[{"role": "user"}])).encode(), 400),
    "an unknown role": (json.dumps(good_body(messages=[{"role": "robot", "content": "x"}])).encode(), 400),
    "alpha NaN": (b'{"messages": [{"role": "user", "content": "hi"}], "alpha": NaN}', 400),
    "alpha Infinity": (b'{"messages": [{"role": "user", "content": "hi"}], "alpha": Infinity}', 400),
    "alpha 1e999": (b'{"messages": [{"role": "user", "content": "hi"}], "alpha": 1e999}', 400),
    "alpha as text": (json.dumps(good_body(alpha="high")).encode(), 400),
    "alpha and control disagree": (json.dumps(good_body(alpha=1, control=2)).encode(), 400),
    "an unknown mode": (json.dumps(good_body(mode="blend")).encode(), 400),
    "max_tokens 0": (json.dumps(good_body(max_tokens=0)).encode(), 400),
    "max_tokens above the context": (json.dumps(good_body(max_tokens=CTX + 1)).encode(), 400),
    "temperature -1": (json.dumps(good_body(temperature=-1)).encode(), 400),
    "n 2": (json.dumps(good_body(n=2)).encode(), 400),
    "a prompt longer than the context": (
        json.dumps(good_body(messages=[{"role": "user", "content": "word " * (2 * CTX)}])).encode(), 400),
    "a body over 1 MiB": (json.dumps(good_body(padding="x" * (1 << 20))).encode(), 413),
}  # fmt: skip


@pytest.mark.parametrize("case", BAD_REQUESTS)
def test_bad_input_is_refused_and_the_server_goes_on(server: ServerProcess, case: str) -> None:
    body, status = BAD_REQUESTS[case]
    headers = auth() | {"Content-Type": "application/json"}
    response = httpx.post(server.api + "/chat/completions", content=body, headers=headers, timeout=60)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["message"] and error["type"]
    assert set(error) == {"message", "type", "param", "code"}
    good = httpx.post(server.api + "/chat/completions", json=good_body(), headers=auth(), timeout=120)
    assert good.status_code == 200 and good.json()["choices"][0]["message"]["content"]


def test_a_bad_text_completion_is_refused(server: ServerProcess) -> None:
    response = httpx.post(server.api + "/completions", json={"max_tokens": 2}, headers=auth())
    assert response.status_code == 400 and "'prompt' is required" in response.json()["error"]["message"]


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}], ids=["missing", "wrong"])
def test_the_api_key_is_required(server: ServerProcess, headers: dict[str, str]) -> None:
    response = httpx.post(server.api + "/chat/completions", json=good_body(), headers=headers)
    assert response.status_code == 401 and response.json()["error"]["type"] == "invalid_api_key"
    wrong = openai.OpenAI(base_url=server.api, api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        wrong.models.list()


def test_unknown_paths_answer_in_the_error_shape(server: ServerProcess) -> None:
    response = httpx.get(server.api + "/nothing-here")
    assert response.status_code == 404 and response.json()["error"]["type"] == "not_found_error"


# -- load, leaving clients, start and stop ------------------------------------------------------------


def test_a_full_server_answers_503_and_a_gone_client_frees_its_slot() -> None:
    server = ServerProcess("--ctx", str(CTX), "--parallel", "1", "--queue", "0")
    try:
        long_answer = good_body(max_tokens=CTX - 64, stream=True, alpha=3.0)
        with httpx.stream("POST", server.api + "/chat/completions", json=long_answer, timeout=120) as stream:
            assert stream.status_code == 200
            next(stream.iter_lines())  # the slot is taken and answering
            full = httpx.post(server.api + "/chat/completions", json=good_body(), timeout=60)
            assert full.status_code == 503 and int(full.headers["retry-after"]) > 0
            assert full.json()["error"]["type"] == "server_overloaded"
        # the client left mid-answer: its slot is free long before the answer could have ended
        deadline = time.monotonic() + 30
        while httpx.get(server.url + "/health").json()["slots_busy"] and time.monotonic() < deadline:
            time.sleep(0.1)
        after = httpx.post(server.api + "/chat/completions", json=good_body(), timeout=60)
        assert after.status_code == 200
        metrics = httpx.get(server.url + "/metrics").text
        assert "clm_requests_cancelled_total 1" in metrics
    finally:
        assert server.stop() == 0, server.errors()


def test_sigterm_ends_an_answer_in_flight_and_stops_cleanly() -> None:
    server = ServerProcess("--ctx", str(CTX), "--parallel", "1")
    finished = threading.Event()

    def stream_a_long_answer() -> None:
        body = good_body(max_tokens=CTX - 64, stream=True, alpha=3.0)
        try:
            with httpx.stream("POST", server.api + "/chat/completions", json=body, timeout=120) as response:
                for _ in response.iter_lines():
                    pass
        except httpx.HTTPError:
            pass  # the server may close the connection: what matters is that it ends
        finished.set()

    worker = threading.Thread(target=stream_a_long_answer)
    worker.start()
    assert httpx.get(server.url + "/health").status_code == 200
    assert server.stop(timeout=60) == 0, server.errors()
    worker.join(60)
    assert finished.is_set()
    assert "Traceback" not in server.errors()


def test_a_model_that_does_not_load_is_one_line_and_exit_1(tmp_path: Path) -> None:
    for path in (write_garbage(tmp_path / "garbage.gguf"), tmp_path / "missing.gguf"):
        result = run_cli("serve", str(path), "--port", "0", timeout=120)
        assert result.returncode == 1
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
        assert result.stderr.startswith("error: ") and str(path) in result.stderr
        assert result.stdout == ""


def test_a_bad_mode_option_is_refused_before_loading() -> None:
    result = run_cli("serve", "--mode", "blend", "--port", "0")
    assert result.returncode == 1 and result.stderr.startswith("error: mode must be one of")
