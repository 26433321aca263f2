"""Conversations at the text level: the Python API, alpha, KV reuse, context overflow, templates.

Two real models: the embedded default model (what users get), and a CLM file made here from the
same base whose pre-layer is a copy of base block 0. That P is not the identity (as an untrained
CLM's is), so alpha changes the answers and comparisons with the base model mean something.
Answers are greedy and short to keep the suite fast; one thread keeps it steady on a busy machine.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import gguf
import pytest
from gguf import GGUFValueType
from tiny_gguf import make_tiny_model

import clm_local
from clm_local import ClmError, default_model
from clm_local.chat import ChatSession, SamplingParams, chat
from clm_local.chat.template import ChatTemplate
from clm_local.gguf import keys as gguf_keys
from clm_local.runtime.model import ALIGNED_SEQ, REFERENCE_SEQ

# Until a trained pre-layer ships, the default model is the plain base model, which says so.
pytestmark = pytest.mark.filterwarnings("ignore:.*no CLM pre-layer")

GREEDY = SamplingParams(temp=0.0)
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


def write_clm_copy(base: Path, out: Path) -> Path:
    """`base` as a CLM file whose P is a copy of base block 0; tensor bytes are copied as they are."""
    reader = gguf.GGUFReader(base)
    arch = reader.get_field("general.architecture").contents()
    writer = gguf.GGUFWriter(out, arch)
    for field in reader.fields.values():
        if field.name.startswith("GGUF.") or field.name == "general.architecture":
            continue
        value = field.contents()
        if field.name == f"{arch}.block_count":
            value += 1
        sub_type = field.types[-1] if field.types[0] == GGUFValueType.ARRAY else None
        writer.add_key_value(field.name, value, field.types[0], sub_type=sub_type)
    writer.add_uint32(gguf_keys.KEY_VERSION, gguf_keys.CLM_VERSION)
    writer.add_uint32(gguf_keys.KEY_PRE_LAYER_COUNT, 1)
    writer.add_float32(gguf_keys.KEY_ALPHA_DEFAULT, 1.0)
    writer.add_string(gguf_keys.KEY_MIX_DEFAULT, "logits")
    tensors = [(t.name, t) for t in reader.tensors if t.name.startswith("blk.0.")]  # P
    for tensor in reader.tensors:
        name = tensor.name
        if name.startswith("blk."):
            _, index, rest = name.split(".", 2)
            name = f"blk.{int(index) + 1}.{rest}"
        tensors.append((name, tensor))
    for name, tensor in tensors:
        writer.add_tensor_info(
            name, tensor.data.shape, tensor.data.dtype, tensor.data.nbytes, tensor.tensor_type
        )
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    for _, tensor in tensors:
        writer.write_tensor_data(tensor.data)
    writer.close()
    return out


@pytest.fixture(scope="module")
def model() -> clm_local.ClmModel:
    """The embedded default model."""
    return clm_local.load(default_model.default_model_path(), n_ctx=512, n_threads=1)


@pytest.fixture(scope="module")
def clm(tmp_path_factory: pytest.TempPathFactory) -> clm_local.ClmModel:
    """A CLM model on the default model's base with a non-identity P."""
    path = write_clm_copy(default_model.base_model_path(), tmp_path_factory.mktemp("clm") / "clm.gguf")
    return clm_local.load(path, n_ctx=512, n_threads=1)


def answer(session: ChatSession, text: str) -> str:
    return "".join(session.ask(text))


def test_the_python_api_answers_in_text(model) -> None:
    text = chat(model, QUESTION, stream=False, temp=0.0, max_tokens=12)
    assert isinstance(text, str) and text.strip()
    pieces = list(chat(model, QUESTION, temp=0.0, max_tokens=12))
    assert "".join(pieces) == text


def test_the_python_api_refuses_a_conversation_not_ending_with_the_user(model) -> None:
    with pytest.raises(ClmError, match="last message"):
        chat(model, [{"role": "assistant", "content": "hi"}])
    with pytest.raises(ClmError, match="role"):
        chat(model, [{"role": "user"}, {"role": "user", "content": "hi"}])


@pytest.mark.parametrize("mode", ["logits", "embed"])
def test_alpha_zero_answers_like_the_base_model(clm, mode: str) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the base file is a plain model: alpha has no effect
        with clm_local.load(default_model.base_model_path(), n_ctx=512, n_threads=1) as base:
            expected = chat(base, QUESTION, stream=False, temp=0.0, max_tokens=16)
    assert chat(clm, QUESTION, alpha=0.0, mode=mode, stream=False, temp=0.0, max_tokens=16) == expected
    # and the pre-layer does change the answer, or the comparison above would prove nothing
    assert chat(clm, QUESTION, alpha=1.0, mode=mode, stream=False, temp=0.0, max_tokens=16) != expected


def test_alpha_one_is_the_same_in_both_modes(clm) -> None:
    in_logits = chat(clm, QUESTION, alpha=1.0, mode="logits", stream=False, temp=0.0, max_tokens=16)
    assert chat(clm, QUESTION, alpha=1.0, mode="embed", stream=False, temp=0.0, max_tokens=16) == in_logits


@pytest.mark.parametrize("alpha", [0.0, 1.0])
def test_a_one_call_answer_at_alpha_0_or_1_leaves_the_reference_sequence_empty(clm, alpha: float) -> None:
    """chat() cannot change its alpha midway, so logits mode at a single-path alpha runs on one
    sequence (as a ChatSession does until its dial first moves elsewhere)."""
    clm.reset()
    chat(clm, QUESTION, alpha=alpha, mode="logits", stream=False, temp=0.0, max_tokens=4)
    assert clm.next_position(ALIGNED_SEQ) > 0 and clm.next_position(REFERENCE_SEQ) == 0
    chat(clm, QUESTION, alpha=0.5, mode="logits", stream=False, temp=0.0, max_tokens=4)
    assert clm.next_position(REFERENCE_SEQ) > 0


def test_a_second_turn_decodes_only_what_is_new(clm, monkeypatch: pytest.MonkeyPatch) -> None:
    session = ChatSession(clm, alpha=0.5, mode="logits", sampling=GREEDY, max_tokens=12)
    answer(session, "Name a colour.")
    decoded: list[int] = []
    original = clm.decode

    def counting_decode(tokens_by_seq, **kwargs):
        decoded.append(len(next(iter(tokens_by_seq.values()))))
        return original(tokens_by_seq, **kwargs)

    monkeypatch.setattr(clm, "decode", counting_decode)
    second = answer(session, "And another one?")
    monkeypatch.undo()
    prompt_tokens = session.template.tokens(session.messages[:-1])
    assert decoded[0] < len(prompt_tokens) / 2  # the first turn came from the cache
    history = session.messages[:-2]
    fresh = ChatSession(clm, alpha=0.5, mode="logits", messages=history, sampling=GREEDY, max_tokens=12)
    assert answer(fresh, "And another one?") == second


def test_a_new_alpha_recomputes_only_in_embed_mode(clm) -> None:
    notices: list[str] = []
    session = ChatSession(clm, alpha=0.5, mode="logits", sampling=GREEDY, max_tokens=4, notify=notices.append)
    answer(session, "Hi")
    for alpha in (1.0, 0.0, 2.0):
        session.set_alpha(alpha)
    assert notices == []
    session.set_mode("embed")
    assert "computed again" in notices[-1]
    answer(session, "Hi again")
    session.set_alpha(2.0)
    assert "embed mode at alpha 2" in notices[-1]


QUESTIONS = ("Name a colour.", "And another one?", "And a third?", "And a fourth?")


def test_the_default_session_decodes_one_sequence_until_the_dial_moves(
    clm, monkeypatch: pytest.MonkeyPatch
) -> None:
    """At the file's defaults (alpha 1, logits) a session decodes the aligned path alone; the
    first alpha that needs the mix adds the reference path with one prefill of the conversation
    (said in one line), and from then on both are decoded, back at alpha 1 too. The answers are
    those of sessions that decoded the pair from the start."""
    notices: list[str] = []
    session = ChatSession(clm, sampling=GREEDY, max_tokens=8, notify=notices.append)
    assert (session.alpha, session.mode) == (1.0, "logits")
    sequences: list[int] = []  # sequences per decode call
    original = clm.decode

    def counting_decode(tokens_by_seq, **kwargs):
        sequences.append(len(tokens_by_seq))
        return original(tokens_by_seq, **kwargs)

    monkeypatch.setattr(clm, "decode", counting_decode)
    first, second = (answer(session, text) for text in QUESTIONS[:2])
    assert sequences and set(sequences) == {1}
    assert clm.next_position(REFERENCE_SEQ) == 0
    session.set_alpha(0.5)
    assert len(notices) == 1 and "computed once more" in notices[0], notices
    cached = len(session.decoder.cached)
    assert f"({cached} tokens)" in notices[0]
    del sequences[:]
    third = answer(session, QUESTIONS[2])
    assert sequences[0] == 1 and set(sequences[1:]) == {2}  # one prefill of the reference, then the pair
    session.set_alpha(1.0)
    fourth = answer(session, QUESTIONS[3])
    assert set(sequences[1:]) == {2} and len(notices) == 1  # the pair is kept: alpha is free again
    monkeypatch.undo()

    def replay(alphas: list[float]) -> list[str]:
        """The same conversation in a session that decodes the pair from the first token."""
        fresh = ChatSession(clm, sampling=GREEDY, max_tokens=8)
        fresh.decoder.prefill(fresh.template.tokens([{"role": "user", "content": "Hi"}]), 0.5, "logits")
        answers = []
        for alpha, text in zip(alphas, QUESTIONS, strict=True):
            fresh.set_alpha(alpha)
            answers.append(answer(fresh, text))
        assert len(fresh.decoder.coefficients) == 2
        return answers

    assert replay([1.0, 1.0, 0.5, 1.0]) == [first, second, third, fourth]


def test_old_exchanges_go_when_the_context_is_full() -> None:
    notices: list[str] = []
    with clm_local.load(default_model.default_model_path(), n_ctx=160, n_threads=1) as small:
        session = ChatSession(
            small,
            messages=[{"role": "system", "content": "You answer in one word."}],
            sampling=GREEDY,
            max_tokens=8,
            notify=notices.append,
        )
        for thing in ("fruit", "animal", "city", "tree"):
            answer(session, f"Name a {thing}. " + "Please think carefully about it. " * 3)
    assert any("dropped" in notice and "system message" in notice for notice in notices)
    assert session.system == "You answer in one word."
    assert session.turns[-2]["content"].startswith("Name a tree.")
    assert len(session.turns) < 8


def test_a_message_longer_than_the_context_is_refused(model) -> None:
    session = ChatSession(model, sampling=GREEDY, max_tokens=4)
    with pytest.raises(ClmError, match="larger context"):
        answer(session, "word " * 600)
    assert session.turns == []  # the session goes on as before


def test_a_stopped_answer_is_kept_as_far_as_it_went(model) -> None:
    session = ChatSession(model, sampling=GREEDY, max_tokens=64)
    pieces = session.ask("Count from one to twenty.")
    written = next(pieces) + next(pieces)
    pieces.close()
    assert session.turns[-1] == {"role": "assistant", "content": written}


def test_a_model_without_chat_template_gets_a_plain_layout(tmp_path: Path) -> None:
    make_tiny_model("llama").write(tmp_path / "tiny.gguf")
    with clm_local.load(tmp_path / "tiny.gguf", n_ctx=64, n_threads=1) as tiny:
        with pytest.warns(UserWarning, match="no chat template"):
            template = ChatTemplate.for_model(tiny)
    assert template.render([{"role": "user", "content": "hi"}]) == "user: hi\n\nassistant:"
