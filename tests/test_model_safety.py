"""Using a model wrongly ends in a ClmError, never a crash or silent garbage: after close(), from a
stale Decoder, from two threads at once, with NaN weights or an overflowing alpha.

Each case that used to kill the process runs in a child process, so a regression fails the test
instead of taking pytest down with it.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from gguf_mutations import apply
from tiny_gguf import make_tiny_model

import clm_local
from clm_local import ClmError
from clm_local.chat import SamplingParams
from clm_local.chat.generation import Decoder
from clm_local.runtime import library

TOKENS = [1, 5, 17, 42]


@pytest.fixture(scope="module")
def clm_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_model("qwen2", seed=3).write(tmp_path_factory.mktemp("safety") / "clm.gguf")


def run_child(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=120
    )


def refusal_in_child(clm_file: Path, call: str, *, after_close: bool = False) -> str:
    """Run `call` on a loaded model (closed first, if asked) in a child process, which a crash
    cannot take pytest down with: the ClmError it printed, as `refused: ...`."""
    result = run_child(
        f"""
        import clm_local
        from clm_local import ClmError
        with clm_local.load({str(clm_file)!r}, n_ctx=32, n_threads=1) as model:
            if {after_close!r}:
                model.logits([1, 2])
                model.close()
            try:
                {call}
            except ClmError as error:
                print("refused:", error)
        """
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout.strip()


@pytest.mark.parametrize(
    "call",
    [
        "model.logits([1, 2])",
        "model.decode({0: [1]})",
        "model.reset()",
        "model.set_alpha(0, 0.5)",
        "model.next_position(0)",
        "model.tokenize('hi')",
        "model.token_to_piece(1)",
        "model.chat_template()",
        "model.is_end_of_generation(1)",
        "__import__('clm_local.chat').chat.chat(model, [{'role': 'user', 'content': 'hi'}], stream=False)",
    ],
)
def test_every_method_of_a_closed_model_raises(clm_file: Path, call: str) -> None:
    """These used to end the process with SIGSEGV or SIGABRT."""
    refusal = refusal_in_child(clm_file, call, after_close=True)
    assert refusal == "refused: this model is closed (load it again)"


def test_closing_twice_is_harmless(clm_file: Path) -> None:
    model = clm_local.load(clm_file, n_ctx=32, n_threads=1)
    model.close()
    model.close()


def test_a_stale_decoder_primes_again_instead_of_decoding_from_position_zero(clm_file: Path) -> None:
    with clm_local.load(clm_file, n_ctx=64, n_threads=1) as model:
        decoder = Decoder(model)
        fresh = decoder.prefill(TOKENS, 0.5, "logits")
        model.logits([3, 4, 5])  # resets the cache under the decoder's feet
        assert decoder.is_stale
        again = decoder.prefill(TOKENS + [7], 0.5, "logits")
        expected = Decoder(model).prefill(TOKENS + [7], 0.5, "logits")
        np.testing.assert_allclose(again, expected, rtol=1e-5, atol=1e-5)
        assert not np.allclose(fresh, again)  # guards the comparison: another position, other logits


def test_a_generation_interrupted_by_another_user_of_the_model_raises(clm_file: Path) -> None:
    with clm_local.load(clm_file, n_ctx=64, n_threads=1) as model:
        tokens = Decoder(model).generate(
            TOKENS, 1.0, "logits", SamplingParams(temp=0.0), 8, stop_at_end=False
        )
        next(tokens)
        model.logits([3, 4])
        with pytest.raises(ClmError, match="used by something else during this generation"):
            next(tokens)


def test_a_chat_session_survives_another_session_on_the_same_model(clm_file: Path) -> None:
    """Two sessions sharing a model take turns: each re-primes its cache when the other used it."""
    with clm_local.load(clm_file, n_ctx=128, n_threads=1) as model:
        greedy = SamplingParams(temp=0.0)
        first = Decoder(model)
        alone = list(first.generate(TOKENS, 1.0, "logits", greedy, 6, stop_at_end=False))
        other = Decoder(model)
        list(other.generate([9, 9, 9], 1.0, "logits", greedy, 6, stop_at_end=False))
        again = list(first.generate(TOKENS, 1.0, "logits", greedy, 6, stop_at_end=False))
        assert again == alone


def test_a_second_thread_is_refused_while_the_first_uses_the_model(clm_file: Path) -> None:
    with clm_local.load(clm_file, n_ctx=64, n_threads=1) as model:
        inside = threading.Event()
        release = threading.Event()
        original = model._llama.llama_decode

        def slow_decode(*args: object) -> int:  # hold the first thread inside decode
            inside.set()
            release.wait(10)
            return original(*args)

        model._llama.llama_decode = slow_decode
        errors: list[BaseException] = []
        first = threading.Thread(target=lambda: model.logits(TOKENS))
        first.start()
        try:
            assert inside.wait(10)
            for call in (lambda: model.logits(TOKENS), lambda: model.tokenize("x"), model.close):
                try:
                    call()
                except ClmError as error:
                    errors.append(error)
        finally:
            release.set()
            first.join()
            model._llama.llama_decode = original
        assert len(errors) == 3
        assert all("in use by another thread" in str(error) for error in errors)
        assert model.logits(TOKENS).shape == (len(TOKENS), model.n_vocab)  # free again afterwards


def test_one_thread_after_another_is_fine(clm_file: Path) -> None:
    with clm_local.load(clm_file, n_ctx=64, n_threads=1) as model:
        results = []
        for _ in range(2):
            worker = threading.Thread(target=lambda: results.append(model.logits(TOKENS)))
            worker.start()
            worker.join()
        np.testing.assert_allclose(results[0], results[1])


def test_nan_weights_raise_instead_of_returning_nan(clm_file: Path, tmp_path: Path) -> None:
    """The file is valid in structure; only its values are bad, so only the logits can tell."""
    poisoned = tmp_path / "nan.gguf"
    poisoned.write_bytes(
        apply({"base": "clm", "op": "nan_weights", "index": 0}, {"clm": clm_file.read_bytes()})
    )
    with clm_local.load(poisoned, n_ctx=32, n_threads=1) as model:
        with pytest.raises(ClmError, match="non-finite logits .* --check-values"):
            model.logits(list(range(8)))
        with pytest.raises(ClmError, match="non-finite logits"):
            list(Decoder(model).generate(list(range(8)), 1.0, "logits", SamplingParams(temp=0.0), 4))


def test_an_overflowing_alpha_raises_instead_of_sampling_garbage(clm_file: Path) -> None:
    with clm_local.load(clm_file, n_ctx=32, n_threads=1) as model:
        with pytest.raises(ClmError, match="alpha is too extreme"):
            model.logits(TOKENS, alpha=3e38, mode="logits")


def test_text_on_a_model_without_a_tokenizer_is_refused(clm_file: Path) -> None:
    """The tiny files have `tokenizer.ggml.model = none`: llama.cpp aborted on the first tokenize."""
    result = run_child(
        f"""
        import clm_local
        from clm_local import ClmError
        model = clm_local.load({str(clm_file)!r}, n_ctx=32, n_threads=1)
        for call in (lambda: model.tokenize("hi"), lambda: model.token_to_piece(1)):
            try:
                call()
            except ClmError as error:
                print("refused:", error)
        """
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.count("has no tokenizer (tokenizer.ggml.model none)") == 2


def test_settings_that_cannot_work_are_refused_before_loading(clm_file: Path) -> None:
    with pytest.raises(ClmError, match="n_threads must be at least 1"):
        clm_local.load(clm_file, n_threads=-1)
    with pytest.raises(ClmError, match="n_gpu_layers must be 0 or more"):
        clm_local.load(clm_file, n_gpu_layers=-1)


def test_gpu_layers_on_a_cpu_build_are_explained(clm_file: Path) -> None:
    if library.status().gpu_offload:
        pytest.skip("this runtime has a GPU backend")
    started = time.monotonic()
    with pytest.warns(UserWarning, match="no GPU backend"):
        clm_local.load(clm_file, n_ctx=32, n_threads=1, n_gpu_layers=99).close()
    assert time.monotonic() - started < 60


@pytest.mark.parametrize(
    "call",
    [
        "model.forget_after(2, 0)",
        "model.forget_after(-1, 0)",
        "model.next_position(7)",
        "model.set_alpha(2, 0.5)",
        "model.get_alpha(300)",
        "model.decode({2: [1]})",
        "model.decode({0: [1], 1: [1]}, mix={0: (5, 0.5)})",
    ],
)
def test_a_sequence_id_out_of_range_is_refused(clm_file: Path, call: str) -> None:
    """forget_after(2, 0) on a model of two sequences reached a GGML_ASSERT (abort)."""
    refusal = refusal_in_child(clm_file, call)
    assert refusal.startswith("refused: sequence id") and "out of range" in refusal


def test_a_shared_kv_pool_decodes_any_mix_of_sequences_in_one_forward_pass(clm_file: Path) -> None:
    """With one pool, scattered sequences with different alphas, prompt chunks and single tokens
    all go through one ubatch; each keeps the logits it has when decoded alone."""
    with clm_local.load(clm_file, n_ctx=32, n_threads=1, n_sequences=8, kv_pool=64, n_batch=32) as model:
        batch = {1: [3, 4, 5, 6], 4: [7], 6: [8, 9], 7: [10]}
        for seq, alpha in zip(batch, (0.5, -1.0, 2.0, 1.0), strict=True):
            model.set_alpha(seq, alpha)
        before = model.forward_passes
        together = model.decode(batch)
        assert model.forward_passes - before == 1
        for seq, tokens in batch.items():
            alpha = model.get_alpha(seq)
            model.reset()
            model.set_alpha(seq, alpha)
            alone = model.decode({seq: tokens})[seq]
            np.testing.assert_allclose(together[seq], alone, rtol=1e-4, atol=1e-4)


def test_an_overflowing_alpha_in_a_shared_pool_leaves_the_other_sequences_finite(clm_file: Path) -> None:
    """The blend is clamped in llama.cpp: alpha 3e38 in embed mode gives finite (useless) values
    instead of inf in the shared KV cache, which the other sequences' attention reads (masked,
    but inf * 0 is nan)."""
    with clm_local.load(clm_file, n_ctx=32, n_threads=1, n_sequences=2, kv_pool=64, n_batch=64) as model:
        model.set_alpha(1, 1.0)
        alone = model.decode({1: TOKENS * 4}, all_logits=True)[1]
        model.reset()
        model.set_alpha(0, 3e38)
        model.decode({0: TOKENS * 4}, check=False)
        model.set_alpha(1, 1.0)
        after = model.decode({1: TOKENS * 4}, all_logits=True)[1]  # attends over the masked cells
        np.testing.assert_allclose(after, alone, rtol=1e-4, atol=1e-4)
