"""Teach (issue 24) through the real server: pairs in, training in a process, the hot swap.

A tiny random llama GGUF (tests/tiny_hf.py) is served as a plain base, so training it and
serving the result take seconds. Each server gets its own --data-dir. The settings are the
defaults except where a test says (CLM_LOCAL_TEACH_SETTINGS): a learning rate high enough that
the tiny model's greedy answers change after a few steps, or one that makes the loss NaN.

The tests of one server run in file order: the refusals see an empty preference file, the
end-to-end test fills it, the cancel test reuses its pairs.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import shlex
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from server_process import ServerProcess, run_cli

from clm_local.errors import ClmError
from clm_local.teach.store import PreferenceStore

pytest.importorskip("torch")
pytest.importorskip("starlette")

NEEDED = 16  # TeachSettings.needed
TRAIN_TIMEOUT_S = 300
PROMPT = "Can you help me?"
# Learns in a few steps on the tiny model (the defaults are for real models and real pairs).
FAST_SETTINGS = {"lr": 3e-3, "sft_lr": 3e-3, "target_steps": 8, "max_epochs": 4}
NAN_SETTINGS = {"beta": 1e38, "sft_epochs": 0, "target_steps": 8}  # DPO gradients overflow: NaN


def pair(i: int) -> dict[str, str]:
    """Separable pairs: the chosen answer opens kindly, the rejected one curtly."""
    topics = ["the capital of France", "a short story", "a cat", "the sun", "a dog", "hello world"]
    topic = topics[i % len(topics)]
    return {
        "prompt": f"Tell me about {topic}, please ({i}).",
        "chosen": f"Yes, I am glad to help you with {topic}.",
        "rejected": f"No. Go away, I will not answer that ({i}).",
    }


@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tiny_hf import make_tiny_model, write_tiny_gguf

    root = tmp_path_factory.mktemp("teach-model")
    return write_tiny_gguf(make_tiny_model(root / "hf", "llama", expanded=False), root / "tiny-base.gguf")


def start(base: Path, data: Path, settings: dict | None = None, *args: str) -> ServerProcess:
    env = dict(os.environ)
    env.pop("CLM_LOCAL_TEACH_SETTINGS", None)
    if settings is not None:
        env["CLM_LOCAL_TEACH_SETTINGS"] = json.dumps(settings)
    return ServerProcess(
        str(base), "--ctx", "128", "--parallel", "2", "--data-dir", str(data), *args, env=env
    )


@pytest.fixture(scope="module")
def server(tiny_base: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    process = start(tiny_base, tmp_path_factory.mktemp("teach-data"), FAST_SETTINGS)
    yield process
    assert process.stop() == 0, process.errors()
    assert "Traceback" not in process.errors(), process.errors()


def post(server: ServerProcess, path: str, body: object, **kwargs: object) -> httpx.Response:
    return httpx.post(server.api + path, json=body, timeout=60, **kwargs)


def get(server: ServerProcess, path: str) -> dict:
    reply = httpx.get(server.api + path, timeout=60)
    assert reply.status_code == 200, reply.text
    return reply.json()


def answer(server: ServerProcess, alpha: float) -> str:
    body = {"prompt": PROMPT, "max_tokens": 12, "temperature": 0, "alpha": alpha, "mode": "logits"}
    reply = post(server, "/completions", body)
    assert reply.status_code == 200, reply.text
    return reply.json()["choices"][0]["text"]


def served_file(server: ServerProcess) -> str:
    return httpx.get(server.url + "/health", timeout=60).json()["model"]


def wait_until_ended(server: ServerProcess) -> dict:
    deadline = time.monotonic() + TRAIN_TIMEOUT_S
    while time.monotonic() < deadline:
        status = get(server, "/clm/train")
        if status["state"] != "running":
            return status
        time.sleep(0.5)
    raise AssertionError(f"training did not end in {TRAIN_TIMEOUT_S} s: {status}")


def fill(server: ServerProcess, count: int = NEEDED) -> None:
    have = get(server, "/clm/preferences")["count"]
    for i in range(have, count):
        reply = post(server, "/clm/preferences", pair(i))
        assert reply.status_code == 201, reply.text
        assert reply.json() == {"count": i + 1, "needed": NEEDED}


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# -- refusals -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"chosen": "a", "rejected": "b"}, "prompt"),
        ({"prompt": 3, "chosen": "a", "rejected": "b"}, "prompt"),
        ({"prompt": "p", "chosen": "", "rejected": "b"}, "chosen"),
        ({"prompt": "p", "chosen": " \n", "rejected": "b"}, "chosen"),
        ({"prompt": "p", "chosen": "a", "rejected": None}, "rejected"),
        ({"prompt": "p", "chosen": "same", "rejected": "same"}, "rejected"),
        ({"prompt": "p", "chosen": "x" * 32_001, "rejected": "b"}, "chosen"),
    ],
)
def test_a_bad_pair_is_refused_naming_the_field(server: ServerProcess, body: dict, param: str) -> None:
    reply = post(server, "/clm/preferences", body)
    assert reply.status_code == 400, reply.text
    error = reply.json()["error"]
    assert error["param"] == param and f"'{param}'" in error["message"]
    assert error["type"] == "invalid_request_error"


def test_a_lone_surrogate_or_a_non_json_body_is_refused(server: ServerProcess) -> None:
    raw = '{"prompt": "\\ud800 hi", "chosen": "a", "rejected": "b"}'
    reply = httpx.post(
        server.api + "/clm/preferences", content=raw, headers={"Content-Type": "application/json"}
    )
    assert reply.status_code == 400 and reply.json()["error"]["param"] == "prompt"
    reply = httpx.post(server.api + "/clm/preferences", content=json.dumps(pair(0)))  # no JSON Content-Type
    assert reply.status_code == 415
    assert post(server, "/clm/preferences", [pair(0)]).status_code == 400
    state = get(server, "/clm/preferences")
    assert state["count"] == 0 and state["needed"] == NEEDED
    assert not Path(state["path"]).exists()  # nothing refused was written, nor the file created


def test_too_few_pairs_nothing_to_cancel_and_unknown_dials_are_refused(server: ServerProcess) -> None:
    fill(server, 3)
    reply = post(server, "/clm/train", {})
    assert reply.status_code == 400
    assert reply.json()["error"]["message"] == f"3 pairs collected, training needs at least {NEEDED}"
    reply = httpx.delete(server.api + "/clm/train", timeout=60)
    assert reply.status_code == 409 and "no training job" in reply.json()["error"]["message"]
    reply = post(server, "/clm/dials/active", {"name": "nope"})
    assert reply.status_code == 404 and reply.json()["error"]["param"] == "name"
    assert post(server, "/clm/train", {"name": "../up"}).status_code == 400
    assert get(server, "/clm/dials") == {"active": None, "dials": []}
    assert get(server, "/clm/train")["state"] == "idle"


# -- train, swap, switch --------------------------------------------------------------------------


def test_labelled_pairs_train_a_dial_that_is_served_at_once(server: ServerProcess, tiny_base: Path) -> None:
    before = answer(server, 1.0)  # a plain base: alpha changes nothing
    fill(server)
    preferences = Path(get(server, "/clm/preferences")["path"])
    stored = preferences.read_bytes()
    first = json.loads(stored.splitlines()[0])
    assert first["model"] == tiny_base.name and first["base"] == get(server, "/clm/preferences")["base"]
    assert first["time"].endswith("+00:00") and {"prompt", "chosen", "rejected"} <= first.keys()

    reply = post(server, "/clm/train", {"name": "kind"})
    assert reply.status_code == 202, reply.text
    assert reply.json()["state"] == "running" and reply.json()["dial"] == "kind"
    again = post(server, "/clm/train", {})
    assert again.status_code == 409 and again.json()["error"]["type"] == "conflict_error"
    status = wait_until_ended(server)
    assert status["state"] == "done", status
    assert status["step"] == status["steps"] > 0 and status["dial"] == "kind"
    assert status["reward_accuracy"] is not None and status["message"].startswith("kind trained on 12 pairs")

    dials = get(server, "/clm/dials")
    assert dials["active"] == "kind" and [d["name"] for d in dials["dials"]] == ["kind"]
    dial = dials["dials"][0]
    assert dial["pairs"] == NEEDED and dial["held_out"]["pairs"] == 4
    assert 0 <= dial["held_out"]["reward_accuracy"] <= 1 and "reward_margin" in dial["held_out"]
    assert Path(dial["file"]).is_file() and served_file(server) == Path(dial["file"]).name
    assert get(server, "/models")["data"][0]["id"] == Path(dial["file"]).stem
    report = json.loads((Path(dial["file"]).parent / "report.json").read_text())
    assert report["held_out"] == dial["held_out"] and report["base"] == first["base"]
    assert preferences.read_bytes() == stored  # training reads the file, never writes it

    trained = answer(server, 1.0)
    assert answer(server, 0.0) == before  # alpha 0 is the base, exactly
    assert trained != before  # alpha 1 answers with the new P

    assert post(server, "/clm/dials/active", {"name": None}).json() == {"active": None}
    assert served_file(server) == tiny_base.name and answer(server, 1.0) == before
    assert post(server, "/clm/dials/active", {"name": "kind"}).json() == {"active": "kind"}
    assert answer(server, 1.0) == trained


def test_cancel_ends_the_job_and_keeps_nothing(server: ServerProcess) -> None:
    fill(server)
    preferences = Path(get(server, "/clm/preferences")["path"])
    stored = digest(preferences)
    reply = post(server, "/clm/train", {"name": "cut"})
    assert reply.status_code == 202, reply.text
    time.sleep(1.0)  # the process is importing torch
    reply = httpx.delete(server.api + "/clm/train", timeout=60)
    assert reply.status_code == 200, reply.text
    assert reply.json()["state"] == "cancelled" and reply.json()["dial"] == "cut"
    assert get(server, "/clm/train")["state"] == "cancelled"
    assert not (preferences.parent / "dials" / "cut").exists()
    assert [d["name"] for d in get(server, "/clm/dials")["dials"]] == ["kind"]
    assert digest(preferences) == stored
    assert answer(server, 0.0)  # still serving


def test_the_curl_examples_of_the_docs_work_as_shown(server: ServerProcess) -> None:
    """docs/teach.md's `$ curl` lines, run in order: each answers JSON of the shape printed under it."""
    if shutil.which("curl") is None:
        pytest.skip("no curl installed")
    lines = (Path(__file__).parent.parent / "docs" / "teach.md").read_text().splitlines()
    examples = [(line[2:], lines[i + 1]) for i, line in enumerate(lines) if line.startswith("$ curl ")]
    assert len(examples) >= 7
    fill(server)  # so that the documented train request starts a run (the next example cancels it)
    for command, shown in examples:
        words = shlex.split(command.replace("http://127.0.0.1:8080", server.url))
        result = subprocess.run(words, capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, (command, result.stderr)
        assert json.loads(result.stdout).keys() == json.loads(shown).keys(), (command, result.stdout)
    assert "--data-dir" in run_cli("serve", "--help").stdout


# -- failure --------------------------------------------------------------------------------------


def test_a_diverging_run_fails_and_the_old_model_serves_on(tiny_base: Path, tmp_path: Path) -> None:
    server = start(tiny_base, tmp_path / "data", NAN_SETTINGS)
    try:
        fill(server)
        preferences = Path(get(server, "/clm/preferences")["path"])
        stored = digest(preferences)
        before = answer(server, 1.0)
        assert post(server, "/clm/train", {"name": "broken"}).status_code == 202
        status = wait_until_ended(server)
        assert status["state"] == "failed", status
        assert "loss became nan" in status["message"].lower(), status
        assert served_file(server) == tiny_base.name and answer(server, 1.0) == before
        assert get(server, "/clm/dials") == {"active": None, "dials": []}
        assert not (preferences.parent / "dials" / "broken").exists()
        assert digest(preferences) == stored
        assert "loss became" in (preferences.parent / "teach.log").read_text()
    finally:
        assert server.stop() == 0, server.errors()


# -- durability -----------------------------------------------------------------------------------


def test_every_acknowledged_pair_survives_sigkill(tiny_base: Path, tmp_path: Path) -> None:
    server = start(tiny_base, tmp_path / "data")
    acknowledged: list[str] = []
    stop = threading.Event()

    def label(worker: int) -> None:
        with httpx.Client(timeout=30) as client:
            for i in range(10_000):
                if stop.is_set():
                    return
                body = pair(i) | {"prompt": f"worker {worker} pair {i}"}
                try:
                    reply = client.post(server.api + "/clm/preferences", json=body)
                except httpx.HTTPError:
                    return  # the server is gone
                if reply.status_code == 201:
                    acknowledged.append(body["prompt"])

    workers = [threading.Thread(target=label, args=(w,)) for w in range(4)]
    try:
        for worker in workers:
            worker.start()
        deadline = time.monotonic() + 60
        while len(acknowledged) < 40 and time.monotonic() < deadline:
            time.sleep(0.05)
        server.process.kill()  # SIGKILL while the workers are still posting
        server.process.wait()
    finally:
        stop.set()
        for worker in workers:
            worker.join(60)
        server.process.stdout.close()
    assert len(acknowledged) >= 40, server.errors()
    [path] = (tmp_path / "data").glob("*/preferences.jsonl")
    pairs, scan = PreferenceStore(path, path.parent.name).read()
    assert {record["prompt"] for _, record in pairs} >= set(acknowledged)
    assert scan.bad_count == 0 and scan.usable == len(pairs) >= len(acknowledged)
    for line in path.read_bytes().splitlines():
        json.loads(line)  # every line is whole: each append is one write, then fsync


# -- the switch itself, in-process ----------------------------------------------------------------


def test_a_switch_lets_the_old_model_finish_what_it_holds(tiny_base: Path, tmp_path: Path) -> None:
    from clm_local.chat.sampling import SamplingParams
    from clm_local.server.scheduler import Finished, GenerationRequest, Job, Scheduler
    from clm_local.server.serving import Serving

    copy = shutil.copy(tiny_base, tmp_path / "copy.gguf")
    serving = Serving(Scheduler(tiny_base, parallel=1, n_ctx=64, n_threads=1))
    old = serving.scheduler
    old.start()
    release = threading.Event()
    original_step = old._step

    def held_step() -> None:  # the old model's first step waits until the switch is done
        release.wait(60)
        original_step()

    old._step = held_step
    request = GenerationRequest(alpha=1.0, mode="logits", sampling=SamplingParams(temp=0), max_tokens=8,
                                prompt="Hello")  # fmt: skip

    async def scenario() -> tuple[list, list]:
        loop = asyncio.get_running_loop()
        held, fresh = Job(request, loop), Job(request, loop)
        assert serving.submit(held) is old
        await asyncio.to_thread(serving.switch, copy)
        assert serving.scheduler is not old and serving.model_path == Path(copy)
        assert serving.submit(fresh) is serving.scheduler  # new requests go to the new model
        release.set()
        return await events_of(held), await events_of(fresh)

    try:
        held_events, fresh_events = asyncio.run(scenario())
        assert isinstance(held_events[-1], Finished), held_events  # answered, not cut off with a 503
        assert isinstance(fresh_events[-1], Finished), fresh_events
        old._thread.join(30)
        assert not old._thread.is_alive()  # the old model closed once its answer was done
        with pytest.raises(ClmError):
            serving.switch(tmp_path / "missing.gguf")
        garbage = tmp_path / "garbage.gguf"
        garbage.write_bytes(b"GGUF" + os.urandom(64))
        with pytest.raises(ClmError):
            serving.switch(garbage)
        assert serving.model_path == Path(copy) and serving.scheduler.running  # still serving
        assert serving.metrics().requests_finished == 2
    finally:
        release.set()
        serving.stop()


async def events_of(job) -> list:
    from clm_local.server.scheduler import Failed, Finished

    events = []
    while True:
        event = await asyncio.wait_for(job.events.get(), 60)
        events.append(event)
        if isinstance(event, Finished | Failed):
            return events
