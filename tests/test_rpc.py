"""A CLM model split across llama.cpp rpc-servers and the local CPU answers as it does locally.

Two `clm-local rpc-server` processes on 127.0.0.1 hold the offloaded layers. For each family,
in both modes at alpha in {-0.5, 0, 0.5, 1, 2}, the logits through RPC match the local run (the
tolerance of test_families.py), with P on the local CPU and with P on a server. A server run
through RPC answers mixed-alpha requests as a local one does; an endpoint that is dead, or not an
rpc-server, is one clear error at load; a server that dies mid-answer ends the process with one
line and exit status 1 (llama.cpp itself would abort).
"""

from __future__ import annotations

import contextlib
import signal
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from clm_local.benchmarks.rpc_overhead import LocalRpcServer, local_rpc_servers
from server_process import ServerProcess, run_cli

from clm_local.errors import ClmError

tiny_families = pytest.importorskip("tiny_families")
pytest.importorskip("torch")

ALPHAS = (-0.5, 0.0, 0.5, 1.0, 2.0)
MODES = ("logits", "embed")
TOKENS = [5, 17, 42, 99, 100, 7, 3, 250, 11, 64, 2, 31]
RELATIVE_TOLERANCE = 2e-3  # of the largest logit, as in test_families.py


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def runtime() -> None:
    from clm_local.runtime import library

    try:
        library.llama()
    except ClmError as error:
        pytest.skip(f"needs the patched runtime: {error}")
    if not library.supports_rpc():
        pytest.skip("this runtime was built without RPC")


@pytest.fixture(scope="module")
def endpoints(runtime: None) -> Iterator[list[str]]:
    """Two servers for this test process (an rpc-server serves one client at a time, and this
    process keeps its connections until it exits: other clients get servers of their own)."""
    with local_rpc_servers(2, threads=1) as found:
        yield found


@pytest.fixture(scope="module", params=list(tiny_families.FAMILIES))
def family_file(request, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp(f"rpc-{request.param}")
    return tiny_families.make_family_files(folder, request.param, converter=None).files["clm_b"]


@pytest.fixture(scope="module")
def tiny_file(tmp_path_factory) -> Path:
    from tiny_gguf import make_tiny_model

    return make_tiny_model("llama").write(tmp_path_factory.mktemp("rpc-tiny") / "tiny.gguf")


def close(got: np.ndarray, expected: np.ndarray) -> bool:
    return float(np.abs(got - expected).max()) <= RELATIVE_TOLERANCE * max(1.0, float(np.abs(expected).max()))


def all_logits(path: Path, **load_options) -> dict[tuple[str, float], np.ndarray]:
    import clm_local

    with clm_local.load(path, n_ctx=64, n_threads=1, **load_options) as model:
        return {
            (mode, alpha): model.logits(TOKENS, alpha=alpha, mode=mode) for mode in MODES for alpha in ALPHAS
        }


@pytest.mark.parametrize("placement", ["P local, blocks on the servers", "everything on the servers"])
def test_logits_through_rpc_match_the_local_run(
    family_file: Path, endpoints: list[str], placement: str
) -> None:
    from clm_local.runtime.model import read_info

    local = all_logits(family_file)
    # llama.cpp offloads the last n_gpu_layers blocks: all but block 0 (P) leaves P on this CPU
    n_blocks = read_info(family_file).n_blocks
    layers = n_blocks - 1 if placement.startswith("P local") else None
    remote = all_logits(family_file, rpc=endpoints, n_gpu_layers=layers)
    for key, expected in local.items():
        assert close(remote[key], expected), key
    assert not close(local[("logits", 1.0)], local[("logits", 0.0)])  # P matters


def test_the_servers_hold_the_layers(family_file: Path, endpoints: list[str]) -> None:
    """llama.cpp says where the weights went: model buffers on both servers."""
    import clm_local
    from clm_local.runtime import library

    with clm_local.load(family_file, n_ctx=64, n_threads=1, rpc=endpoints):
        said = "\n".join(library._recent_log)
    for endpoint in endpoints:
        assert f"RPC[{endpoint}]" in said or endpoint in said, said[-2000:]


def test_an_unreachable_endpoint_is_one_clear_error(runtime: None, tiny_file: Path) -> None:
    import clm_local

    dead = f"127.0.0.1:{free_port()}"
    with pytest.raises(ClmError, match=f"cannot reach the RPC server {dead}"):
        clm_local.load(tiny_file, n_ctx=64, rpc=[dead])


def test_something_else_on_the_port_is_one_clear_error(runtime: None, tiny_file: Path) -> None:
    """A listener that is not an rpc-server (here: one that hangs up at once) is named as such."""
    import clm_local

    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def hang_up() -> None:
        with contextlib.suppress(OSError):
            while True:
                connection, _ = listener.accept()
                connection.close()

    threading.Thread(target=hang_up, daemon=True).start()
    try:
        with pytest.raises(ClmError, match="not a llama.cpp rpc-server"):
            clm_local.load(tiny_file, n_ctx=64, rpc=[f"127.0.0.1:{port}"])
    finally:
        listener.close()


@pytest.mark.parametrize(
    "value, message",
    [
        ("", "at least one HOST:PORT"),
        ("localhost", "HOST:PORT"),
        ("127.0.0.1:0", "port from 1 to 65535"),
        ("127.0.0.1:70000", "port from 1 to 65535"),
        ("127.0.0.1:5,127.0.0.1:5", "same server twice"),
    ],
)
def test_bad_rpc_lists_are_refused_before_loading(value: str, message: str) -> None:
    from clm_local.runtime.rpc import parse_endpoints

    with pytest.raises(ClmError, match=message):
        parse_endpoints(value)


def test_the_cli_says_a_dead_endpoint_in_one_line(runtime: None) -> None:
    result = run_cli("chat", "--prompt", "hi", "--rpc", f"127.0.0.1:{free_port()}", timeout=120)
    assert result.returncode == 1
    assert result.stderr.strip().count("\n") == 0, result.stderr
    assert "cannot reach the RPC server" in result.stderr


def test_rpc_server_refuses_bad_options(runtime: None) -> None:
    busy = socket.create_server(("127.0.0.1", 0))
    try:
        in_use = run_cli("rpc-server", "--port", str(busy.getsockname()[1]))
    finally:
        busy.close()
    assert in_use.returncode == 1 and "cannot listen" in in_use.stderr
    for args, message in ((["--host", "localhost"], "IPv4"), (["--port", "0"], "between 1 and 65535")):
        result = run_cli("rpc-server", *args)
        assert result.returncode == 1 and message in result.stderr, result.stderr


def ask(client, alpha: float) -> str:
    reply = client.chat.completions.create(
        model="default",
        messages=[{"role": "user", "content": "Name one colour."}],
        max_tokens=12,
        temperature=0,
        extra_body={"alpha": alpha},
    )
    return reply.choices[0].message.content


def test_a_server_through_rpc_answers_mixed_alphas_like_a_local_one(runtime: None) -> None:
    import openai

    alphas = (0.0, 0.5, 1.0, 2.0)
    local = ServerProcess("--parallel", "1")
    try:
        expected = {alpha: ask(openai.OpenAI(base_url=local.api, api_key="none"), alpha) for alpha in alphas}
    finally:
        local.stop()
    with local_rpc_servers(2, threads=1) as endpoints:
        remote = ServerProcess("--parallel", "4", "--rpc", ",".join(endpoints))
        try:
            client = openai.OpenAI(base_url=remote.api, api_key="none")
            answers: dict[float, str] = {}
            threads = [
                threading.Thread(target=lambda a=a: answers.__setitem__(a, ask(client, a))) for a in alphas
            ]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(120)
            # Requests decoded side by side round differently in the last bits (docs/reliability.md),
            # and alpha 2 extrapolates those bits: the opening words must agree up to alpha 1, and
            # every answer must come. One at a time, each is decoded alone, as locally: all equal.
            assert all(answers.get(alpha) for alpha in alphas), answers
            for alpha in alphas[:-1]:
                assert answers[alpha].split()[:3] == expected[alpha].split()[:3], (alpha, answers, expected)
            assert {alpha: ask(client, alpha) for alpha in alphas} == expected
        finally:
            assert remote.stop() == 0, remote.errors()


def test_a_server_that_dies_mid_answer_ends_the_process_with_one_line(runtime: None) -> None:
    import httpx

    servers = [LocalRpcServer(threads=1), LocalRpcServer(threads=1)]
    endpoints = ",".join(server.endpoint for server in servers)
    served = ServerProcess("--parallel", "1", "--rpc", endpoints)
    try:
        body = {
            "model": "default",
            "messages": [{"role": "user", "content": "Write a long story about the sea."}],
            "max_tokens": 400,
            "stream": True,
            "alpha": 0.5,
        }
        with contextlib.suppress(httpx.HTTPError):
            with httpx.stream("POST", served.api + "/chat/completions", json=body, timeout=60) as reply:
                for index, _ in enumerate(reply.iter_lines()):
                    if index == 2:
                        servers[1].process.send_signal(signal.SIGKILL)
        served.process.wait(60)
        assert served.process.returncode == 1, served.errors()
        errors = served.errors()
        assert "stopped" in errors and servers[1].endpoint in errors, errors
        assert "Traceback" not in errors and "backtrace" not in errors.lower()
    finally:
        served.stop()
        for server in servers:
            server.stop()
