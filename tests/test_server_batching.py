"""Continuous batching: eight requests at eight alphas, both modes mixed, share decode steps.

Each greedy answer must equal what the same request gives when it is alone on the server, and every
step must be one forward pass. Equality needs the same arithmetic for each row: llama.cpp's CPU
attention sums a sequence's cached keys in the order of their cells (in f16) and takes another
kernel for a step of 64 rows or more, so a request whose cells land in a hole another request left,
or that shares a step with a long prompt, can round differently (as under llama-server). Short
prompts read in one step, decoded in lockstep to the same length, keep every row's arithmetic as
when alone; a near tie may still flip for at most one answer of the eight, and the test prints how
many differed.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest
from server_process import ServerProcess

CTX = 512
REQUESTS = [  # (alpha, mode, prompt): eight alphas, the two modes alternating
    (-1.0, "logits", "The capital of France is"),
    (-0.5, "embed", "A yellow fruit:"),
    (0.0, "logits", "The sky is blue because"),
    (0.5, "embed", "To sleep well,"),
    (1.0, "logits", "Two plus two is"),
    (1.5, "embed", "Rain falls on"),
    (2.0, "logits", "Bees make"),
    (3.0, "embed", "A spider has"),
]


@pytest.fixture(scope="module")
def server() -> Iterator[ServerProcess]:
    process = ServerProcess("--ctx", str(CTX), "--parallel", "8")
    yield process
    assert process.stop() == 0, process.errors()


def answer(client: openai.OpenAI, alpha: float, mode: str, prompt: str) -> tuple[str, float, str]:
    reply = client.completions.create(
        model="default",
        prompt=prompt,
        temperature=0,
        max_tokens=16,
        extra_body={"alpha": alpha, "mode": mode},
    )
    return reply.choices[0].text, reply.model_extra["alpha"], reply.model_extra["mode"]


def metric(server: ServerProcess, name: str) -> int:
    text = httpx.get(server.url + "/metrics").text
    return int(re.search(rf"^{name} (\d+)$", text, re.MULTILINE).group(1))


def test_eight_alphas_at_once_answer_as_alone(server: ServerProcess) -> None:
    client = openai.OpenAI(base_url=server.api, api_key="none", max_retries=0, timeout=300)
    with ThreadPoolExecutor(len(REQUESTS)) as pool:
        together = list(pool.map(lambda request: answer(client, *request), REQUESTS))
    several_slots = metric(server, "clm_decode_steps_with_several_slots_total")
    steps, passes = (
        metric(server, "clm_decode_steps_total"),
        metric(server, "clm_decode_forward_passes_total"),
    )
    most_passes = metric(server, "clm_decode_max_forward_passes_per_step")
    most_slots = metric(server, "clm_decode_max_slots_per_step")
    most_sequences = metric(server, "clm_decode_max_sequences_per_step")
    alone = [answer(client, *request) for request in REQUESTS]

    for (alpha, mode, _), (text, echoed_alpha, echoed_mode) in zip(REQUESTS, together, strict=True):
        assert text and echoed_alpha == alpha and echoed_mode == mode
    differ = [i for i, (a, b) in enumerate(zip(together, alone, strict=True)) if a[0] != b[0]]
    print(f"\n{len(differ)} of {len(REQUESTS)} batched answers differ from the same request alone; "
          f"most requests in one step: {most_slots}, most sequences: {most_sequences}, "
          f"steps with several requests: {several_slots}")  # fmt: skip
    for i in differ:
        print(f"  alpha {REQUESTS[i][0]} {REQUESTS[i][1]}: {together[i][0]!r} vs alone {alone[i][0]!r}")
    assert len(differ) <= 1
    assert several_slots > 0 and most_slots > 1
    assert most_sequences > most_slots  # logits-mode slots bring two sequences each
    # one forward pass (llama.cpp ubatch) per step, whatever mix of slots, modes and alphas it holds:
    # with a KV stream per sequence, 10 scattered sequences took 6 ubatches
    assert most_passes == 1 and passes == steps


def test_logits_mode_at_alpha_0_or_1_decodes_one_sequence(server: ServerProcess) -> None:
    """Alpha 0 and 1 are single paths: a logits-mode request there runs as embed mode does, one
    sequence a step, with embed mode's answer; any other alpha brings the reference sequence."""
    client = openai.OpenAI(base_url=server.api, api_key="none", max_retries=0, timeout=300)
    question = "What do bees make?"

    def counts() -> tuple[int, int]:
        return metric(server, "clm_decode_steps_total"), metric(server, "clm_decode_sequences_total")

    def sequences_per_step(alpha: float, mode: str) -> tuple[float, str]:
        steps, sequences = counts()
        text = answer(client, alpha, mode, question)[0]
        steps_after, sequences_after = counts()
        return (sequences_after - sequences) / (steps_after - steps), text

    for alpha in (0.0, 1.0):
        per_step, text = sequences_per_step(alpha, "logits")
        assert per_step == 1 and text == answer(client, alpha, "embed", question)[0]
    assert sequences_per_step(0.5, "logits")[0] == 2


def test_an_overflowing_alpha_fails_only_its_own_request(server: ServerProcess) -> None:
    """alpha 3e38 overflows the logits mix of its slot: that request gets a 400 with the reason,
    the request decoded in the same steps answers as it does alone."""
    client = openai.OpenAI(base_url=server.api, api_key="none", max_retries=0, timeout=300)
    normal = (1.0, "logits", "What do bees make?")
    with ThreadPoolExecutor(2) as pool:
        extreme = pool.submit(answer, client, 3e38, "logits", "What is the capital of France?")
        together = pool.submit(answer, client, *normal)
        with pytest.raises(openai.BadRequestError, match="alpha 3e\\+38 gives non-finite logits"):
            extreme.result()
        assert starts_alike(together.result(), answer(client, *normal))


def test_an_extreme_embed_alpha_cannot_spoil_the_shared_cache(server: ServerProcess) -> None:
    """In embed mode alpha 3e38 overflows the blend itself; llama.cpp clamps it, so the cells that
    request writes into the shared KV cache stay finite: the request decoded beside it answers
    (as it does alone, up to the rounding of cells reused out of order), and the same request
    afterwards, on the idle server, answers exactly as alone. The exact comparison beside an
    extreme alpha is runtime-level: test_model_safety's shared-pool test."""
    client = openai.OpenAI(base_url=server.api, api_key="none", max_retries=0, timeout=300)
    normal = (0.5, "logits", "Bees make")
    alone = answer(client, *normal)
    with ThreadPoolExecutor(2) as pool:
        extreme = pool.submit(answer, client, -3e38, "embed", "The capital of France is")
        together = pool.submit(answer, client, *normal)
        try:
            extreme.result()  # finite nonsense, or a 400 saying why: either way it ends alone
        except openai.BadRequestError as error:
            assert "non-finite" in str(error)
        assert starts_alike(together.result(), alone)
    assert answer(client, *normal) == alone


def starts_alike(batched: tuple[str, float, str], alone: tuple[str, float, str]) -> bool:
    """The same answer's opening words. A request decoded beside one that ends early can get its
    later cells in the holes that one left, and llama.cpp's attention rounds by cell order, so a
    near tie may flip further on (module docstring); a spoiled cache shows from the first token."""
    return batched[1:] == alone[1:] and batched[0].split()[:3] == alone[0].split()[:3]
