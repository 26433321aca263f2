"""The patched llama.cpp against the independent numpy reference, on tiny random CLM files.

These tests need the patched runtime (`clm-local runtime install`); without it they fail, since
the runtime is the product.
"""

from __future__ import annotations

import ctypes
import warnings
from pathlib import Path

import gguf
import numpy as np
import pytest
from numpy_reference import forward, forward_plain, relative_error
from tiny_gguf import TinyModel, make_tiny_model

import clm_local
from clm_local import ClmError

ALPHAS = (-0.5, 0.0, 0.25, 0.5, 1.0, 1.5, 3.0)
MODES = ("logits", "embed")
TOLERANCE = 1e-2
TOKENS = [1, 5, 17, 42, 3, 88, 64, 9, 33, 70, 2, 11]


@pytest.fixture(scope="module", params=["llama", "qwen2"])
def tiny(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[TinyModel, Path]:
    """A random CLM model of each architecture, written as its three file variants."""
    model = make_tiny_model(request.param, n_base_blocks=2, seed=7)
    folder = tmp_path_factory.mktemp(request.param)
    for variant in ("clm", "base", "plain_expanded"):
        model.write(folder / f"{variant}.gguf", variant)
    return model, folder


@pytest.fixture(scope="module")
def loaded(tiny: tuple[TinyModel, Path]) -> clm_local.ClmModel:
    _, folder = tiny
    return clm_local.load(folder / "clm.gguf", n_ctx=64, n_threads=2)


@pytest.mark.parametrize("mode", MODES)
def test_matches_the_numpy_reference_at_every_alpha(tiny, loaded, mode: str) -> None:
    model, _ = tiny
    for alpha in ALPHAS:
        got = loaded.logits(TOKENS, alpha=alpha, mode=mode)
        assert got.shape == (len(TOKENS), model.config.n_vocab)
        error = relative_error(got, forward(model, TOKENS, alpha, mode))
        assert error <= TOLERANCE, f"alpha={alpha} mode={mode}: relative error {error:.2e}"


def test_alpha_moves_the_logits(tiny, loaded) -> None:
    """Guards the tests above: a runtime that ignored alpha would fail here."""
    assert relative_error(loaded.logits(TOKENS, 0.0), loaded.logits(TOKENS, 1.0)) > 0.1


@pytest.mark.parametrize("mode", MODES)
def test_alpha_zero_is_the_base_model_and_alpha_one_the_expanded_model(tiny, loaded, mode: str) -> None:
    _, folder = tiny
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # plain models warn that alpha has no effect
        with clm_local.load(folder / "base.gguf", n_ctx=64, n_threads=2) as base:
            base_logits = base.logits(TOKENS)
        with clm_local.load(folder / "plain_expanded.gguf", n_ctx=64, n_threads=2) as expanded:
            expanded_logits = expanded.logits(TOKENS)
    assert relative_error(loaded.logits(TOKENS, 0.0, mode), base_logits) <= TOLERANCE
    assert relative_error(loaded.logits(TOKENS, 1.0, mode), expanded_logits) <= TOLERANCE


def test_logits_mode_at_alpha_0_and_1_is_embed_mode_with_one_sequence(tiny, loaded) -> None:
    """What lets a one-shot answer at alpha 0 or 1 skip logits mode's second sequence."""
    for alpha in (0.0, 1.0):
        embed = loaded.logits(TOKENS, alpha, "embed")
        np.testing.assert_allclose(loaded.logits(TOKENS, alpha, "logits"), embed, rtol=0, atol=1e-5)


def test_a_sequence_of_calls_with_changing_alpha_and_mode(tiny, loaded) -> None:
    """No stale graph, no KV left over from an earlier call or from the other sequence."""
    model, _ = tiny
    calls = [
        (0.5, "embed"),
        (1.5, "logits"),
        (0.0, "embed"),
        (3.0, "embed"),
        (0.25, "logits"),
        (0.5, "embed"),
    ]
    for i, (alpha, mode) in enumerate(calls):
        tokens = TOKENS[: 4 + i]  # a different length each time as well
        error = relative_error(loaded.logits(tokens, alpha, mode), forward(model, tokens, alpha, mode))
        assert error <= TOLERANCE, f"call {i} (alpha={alpha}, {mode}): relative error {error:.2e}"


def test_incremental_decoding_equals_one_pass(tiny, loaded) -> None:
    """Token-by-token decoding on the KV cache, with both sequences in one batch, as chat does."""
    model, _ = tiny
    loaded.reset()
    loaded.set_alpha(0, 1.0)
    loaded.set_alpha(1, 0.0)
    loaded.decode({0: TOKENS[:5], 1: TOKENS[:5]})
    rows = []
    for token in TOKENS[5:]:
        out = loaded.decode({0: [token], 1: [token]})
        rows.append(0.5 * out[0][-1] + 0.5 * out[1][-1])
    expected = forward(model, TOKENS, 0.5, "logits")[5:]
    assert relative_error(np.stack(rows), expected) <= TOLERANCE


def test_default_alpha_and_mode_come_from_the_file(tmp_path: Path) -> None:
    model = make_tiny_model("llama", seed=3, alpha_default=0.25, mix_default="embed")
    path = model.write(tmp_path / "m.gguf")
    with clm_local.load(path, n_ctx=32, n_threads=2) as loaded:
        assert loaded.info.alpha_default == 0.25 and loaded.info.mix_default == "embed"
        assert loaded.get_alpha(0) == 0.25  # llama.cpp read clm.alpha_default too
        error = relative_error(loaded.logits(TOKENS), forward(model, TOKENS, 0.25, "embed"))
        assert error <= TOLERANCE


def test_info_describes_the_file(tiny, loaded) -> None:
    model, _ = tiny
    info = loaded.info
    assert (info.architecture, info.n_blocks, info.n_pre_layers) == (model.config.arch, 3, 1)
    assert (info.alpha_default, info.mix_default, info.n_vocab) == (1.0, "logits", model.config.n_vocab)


def test_a_plain_model_warns_once_that_alpha_does_nothing(tiny) -> None:
    model, folder = tiny
    with clm_local.load(folder / "base.gguf", n_ctx=32, n_threads=2) as plain:
        assert not plain.info.is_clm
        with pytest.warns(UserWarning, match="alpha has no effect"):
            first = plain.logits(TOKENS, alpha=0.0)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            second = plain.logits(TOKENS, alpha=3.0)
    np.testing.assert_array_equal(first, second)
    assert relative_error(first, forward_plain(model, TOKENS, use_pre_layer=False)) <= TOLERANCE


# -- bad input: one clear ClmError, never a crash ------------------------------------------------


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ClmError, match="no such file"):
        clm_local.load(tmp_path / "nope.gguf")


def test_not_a_gguf(tmp_path: Path) -> None:
    path = tmp_path / "text.gguf"
    path.write_text("hello, I am not a model\n" * 10)
    with pytest.raises(ClmError, match="not a GGUF"):
        clm_local.load(path)


def test_truncated_gguf(tiny, tmp_path: Path) -> None:
    _, folder = tiny
    data = (folder / "clm.gguf").read_bytes()
    for keep in (len(data) // 2, 200, 30):
        path = tmp_path / f"cut{keep}.gguf"
        path.write_bytes(data[:keep])
        with pytest.raises(ClmError, match="truncated|corrupt"):
            clm_local.load(path)


def test_corrupt_header(tiny, tmp_path: Path) -> None:
    _, folder = tiny
    data = bytearray((folder / "clm.gguf").read_bytes())
    data[8:24] = b"\xff" * 16  # tensor and key counts become absurd
    path = tmp_path / "corrupt.gguf"
    path.write_bytes(bytes(data))
    with pytest.raises(ClmError, match="corrupt|truncated"):
        clm_local.load(path)


def test_architecture_the_hook_cannot_serve(tmp_path: Path) -> None:
    path = tmp_path / "gemma.gguf"
    writer = gguf.GGUFWriter(path, "gemma")
    writer.add_block_count(3)
    writer.add_uint32("clm.pre_layer_count", 1)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(ClmError, match="does not serve the 'gemma' architecture"):
        clm_local.load(path)


@pytest.mark.parametrize("alpha", [float("nan"), float("inf"), float("-inf")])
def test_alpha_must_be_finite(loaded, alpha: float) -> None:
    with pytest.raises(ClmError, match="finite"):
        loaded.logits(TOKENS, alpha=alpha)
    with pytest.raises(ClmError, match="finite"):
        loaded.set_alpha(0, alpha)


def test_unknown_mode(loaded) -> None:
    with pytest.raises(ClmError, match="mode must be one of"):
        loaded.logits(TOKENS, mode="average")


@pytest.mark.parametrize("bad", [[-1], [96], [1, 2, 10**9], []])
def test_token_ids_out_of_range(loaded, bad: list[int]) -> None:
    with pytest.raises(ClmError, match="out of range|no tokens"):
        loaded.logits(bad)


def test_context_too_small(tiny) -> None:
    _, folder = tiny
    with clm_local.load(folder / "clm.gguf", n_ctx=8, n_threads=2) as small:
        with pytest.raises(ClmError, match="do not fit the context"):
            small.logits(TOKENS)
        small.reset()
        small.decode({0: TOKENS[:6]})
        with pytest.raises(ClmError, match="context is full"):
            small.decode({0: TOKENS[6:]})


def test_a_resized_context_holds_more_and_still_matches_the_reference(tiny) -> None:
    model, folder = tiny
    with clm_local.load(folder / "clm.gguf", n_ctx=8, n_threads=2) as growing:
        growing.decode({0: TOKENS[:6]})
        version = growing.cache_version
        growing.resize_context(len(TOKENS))
        assert growing.n_ctx == len(TOKENS) and growing.cache_version > version
        assert growing.next_position(0) == 0  # the new context starts empty
        for mode in MODES:
            error = relative_error(growing.logits(TOKENS, 1.5, mode), forward(model, TOKENS, 1.5, mode))
            assert error <= TOLERANCE, f"{mode}: relative error {error:.2e}"
        with pytest.raises(ClmError, match="n_ctx must be positive"):
            growing.resize_context(0)
        growing.close()
        with pytest.raises(ClmError, match="closed"):
            growing.resize_context(16)


# --- the pre-layer API's contract (llama.h in llama-cpp-pre-layer.patch) -----------------------


def test_a_plain_context_starts_at_alpha_1_when_the_default_mode_is_logits(tmp_path: Path) -> None:
    """clm.alpha_default belongs to the file's default mode: in logits mode the per-sequence alpha of a
    plain llama.cpp context is 1 (the aligned path), and only the Python mix applies the default."""
    model = make_tiny_model("llama", seed=3, alpha_default=0.25, mix_default="logits")
    path = model.write(tmp_path / "m.gguf")
    with clm_local.load(path, n_ctx=32, n_threads=2) as loaded:
        assert loaded.get_alpha(0) == 1.0 and loaded.get_alpha(1) == 1.0
        error = relative_error(loaded.logits(TOKENS), forward(model, TOKENS, 0.25, "logits"))
        assert error <= TOLERANCE


def test_a_token_in_sequences_with_different_alphas_is_refused(tiny) -> None:
    """One token in two sequences (a shared prompt prefix) gets one blend: their alphas must agree."""
    from clm_local.runtime import library

    _, folder = tiny
    llama = library.llama()
    model = llama.llama_model_load_from_file(
        str(folder / "clm.gguf").encode(), llama.llama_model_default_params()
    )
    params = llama.llama_context_default_params()
    params.n_ctx, params.n_batch, params.n_seq_max, params.kv_unified = 64, 8, 2, True
    params.n_threads = params.n_threads_batch = 1
    context = llama.llama_init_from_model(model, params)
    batch = llama.llama_batch_init(1, 0, 2)
    try:

        def decode_shared_token(alpha_0: float, alpha_1: float) -> int:
            library.set_pre_layer_alpha(context, 0, alpha_0)
            library.set_pre_layer_alpha(context, 1, alpha_1)
            llama.llama_memory_clear(llama.llama_get_memory(context), True)
            batch.n_tokens = 1
            batch.token[0], batch.pos[0], batch.n_seq_id[0], batch.logits[0] = TOKENS[0], 0, 2, True
            batch.seq_id[0][0], batch.seq_id[0][1] = 0, 1
            return int(llama.llama_decode(context, batch))

        assert decode_shared_token(0.5, 0.5) == 0
        assert decode_shared_token(1.0, 0.0) == -1
        assert any("alphas differ" in line for line in library._recent_log)
    finally:
        llama.llama_batch_free(batch)
        llama.llama_free(context)
        llama.llama_model_free(model)


def test_logits_mode_mixes_before_the_head_as_numpy_mixes_after_it(loaded) -> None:
    """llama.cpp mixes the final hidden states and runs the head once: exact for a linear head."""
    from clm_local.runtime.model import mix_logits

    assert loaded.mixes_before_head
    both = {0: TOKENS, 1: TOKENS}
    loaded.reset()
    loaded.set_alpha(0, 1.0)
    loaded.set_alpha(1, 0.0)
    rows = loaded.decode(both, all_logits=True)  # unmixed: each path's own logits
    for alpha in ALPHAS:
        loaded.reset()
        mixed = loaded.decode(both, all_logits=True, mix={0: (1, alpha)})
        assert set(mixed) == {0}
        expected = mix_logits(rows[0], rows[1], alpha)
        assert relative_error(mixed[0], expected) <= 1e-5, alpha


def test_a_mixed_output_without_its_partner_fails_the_decode_not_the_process(loaded) -> None:
    from clm_local.runtime import library

    context = loaded._context
    assert not library.set_logit_mix(context, 0, 0, 0.5)  # a sequence with itself
    assert not library.set_logit_mix(context, 0, 1, float("nan"))
    assert not library.set_logit_mix(context, 0, 100_000, 0.5)
    assert library.set_logit_mix(context, 0, 1, 0.5)
    try:
        assert not library.set_logit_mix(context, 2, 1, 0.5)  # 1 is in a pair already
        loaded.reset()
        with pytest.raises(ClmError, match="partner"):
            loaded.decode({0: TOKENS})  # the reference sequence's outputs are missing
    finally:
        assert library.set_logit_mix(context, 1, -1, 1.0)  # either side ends the pair
    assert library.set_logit_mix(context, 0, 1, 0.5)  # both are free again
    assert library.set_logit_mix(context, 0, -1, 1.0)
    loaded.reset()
    assert loaded.decode({0: TOKENS})[0].shape == (1, loaded.n_vocab)
    with pytest.raises(ClmError, match="same positions"):
        loaded.decode({0: [1], 1: [1]}, mix={0: (1, 0.5)})  # sequence 0 holds more positions


def _with_control_vector(model: clm_local.ClmModel, layer: int, direction: np.ndarray) -> None:
    """A control vector on one layer (llama.cpp counts from 1; data starts at layer 1)."""
    data = np.zeros((layer, direction.size), dtype=np.float32)
    data[layer - 1] = direction
    pointer = data.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
    status = model._llama.llama_set_adapter_cvec(
        model._context, pointer, data.size, direction.size, layer, layer
    )
    assert status == 0


@pytest.mark.filterwarnings("ignore:.*has no CLM pre-layer")
def test_a_control_vector_applies_to_the_same_base_block_as_on_the_base_model(tiny) -> None:
    model, folder = tiny
    direction = np.random.default_rng(0).normal(0, 0.5, model.config.n_embd).astype(np.float32)
    with clm_local.load(folder / "base.gguf", n_ctx=64, n_threads=2) as base:
        without = base.logits(TOKENS)
        _with_control_vector(base, 1, direction)
        expected = base.logits(TOKENS)
    assert relative_error(expected, without) > 1e-2  # the vector matters
    with clm_local.load(folder / "clm.gguf", n_ctx=64, n_threads=2) as clm_model:
        _with_control_vector(clm_model, 1, direction)
        for mode in MODES:
            assert relative_error(clm_model.logits(TOKENS, 0.0, mode), expected) <= TOLERANCE, mode


def test_llama_cpp_refuses_pre_layers_for_an_architecture_outside_its_list(tmp_path: Path) -> None:
    """At load, with one line, even when the Python checks are bypassed."""
    from clm_local.runtime import library

    path = tmp_path / "falcon.gguf"
    writer = gguf.GGUFWriter(path, "falcon")
    writer.add_context_length(64)
    writer.add_embedding_length(32)
    writer.add_block_count(3)
    writer.add_uint32("clm.pre_layer_count", 1)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    llama = library.llama()
    assert not llama.llama_model_load_from_file(str(path).encode(), llama.llama_model_default_params())
    refusal = "hyperparameters: CLM pre-layers are not supported for the falcon architecture"
    assert any(line.endswith(refusal) for line in library._recent_log)
