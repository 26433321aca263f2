"""Token-level generation (clm_local.chat.generate / Decoder) on tiny random CLM files.

The tiny files have a random, non-identity pre-layer, so alpha visibly changes the tokens: alpha 0
must decode exactly like the base file, alpha 1 like the expanded file loaded as an ordinary
model, and any alpha like the argmax of `model.logits` (computed from scratch every step).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
from tiny_gguf import make_tiny_model

import clm_local
from clm_local import ClmError
from clm_local.chat import Decoder, SamplingParams, generate

PROMPT = [1, 2, 3, 40, 7]
N_NEW = 12
GREEDY = SamplingParams(temp=0.0)
MODES = ("logits", "embed")


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("tiny_chat")
    model = make_tiny_model("llama", n_base_blocks=2, seed=3)
    for variant in ("clm", "base", "plain_expanded"):
        model.write(folder / f"{variant}.gguf", variant)
    return folder


@pytest.fixture(scope="module")
def clm(folder: Path) -> clm_local.ClmModel:
    return clm_local.load(folder / "clm.gguf", n_ctx=64, n_threads=1)


def greedy_plain(path: Path, prompt: list[int], n: int) -> list[int]:
    """Greedy decoding of an ordinary model file, one token at a time, without clm_local.chat."""
    with clm_local.load(path, n_ctx=64, n_threads=1) as model:
        logits = model.decode({0: prompt})[0][-1]
        tokens = []
        for _ in range(n):
            tokens.append(int(np.argmax(logits)))
            logits = model.decode({0: tokens[-1:]})[0][-1]
    return tokens


def greedy_from_scratch(model: clm_local.ClmModel, alpha: float, mode: str, n: int) -> list[int]:
    """Greedy decoding that recomputes every position each step: no KV cache to get wrong."""
    tokens = list(PROMPT)
    for _ in range(n):
        tokens.append(int(np.argmax(model.logits(tokens, alpha, mode)[-1])))
    return tokens[len(PROMPT) :]


@pytest.mark.parametrize("mode", MODES)
def test_alpha_zero_decodes_like_the_base_file(folder, clm, mode: str) -> None:
    got = list(generate(clm, PROMPT, 0.0, mode, GREEDY, N_NEW))
    assert got == greedy_plain(folder / "base.gguf", PROMPT, N_NEW)


@pytest.mark.parametrize("mode", MODES)
def test_alpha_one_decodes_like_the_expanded_file(folder, clm, mode: str) -> None:
    got = list(generate(clm, PROMPT, 1.0, mode, GREEDY, N_NEW))
    assert got == greedy_plain(folder / "plain_expanded.gguf", PROMPT, N_NEW)


def test_alpha_changes_the_tokens(clm) -> None:
    """Guards the two tests above: with a P that did nothing they would pass trivially."""
    assert list(generate(clm, PROMPT, 0.0, "logits", GREEDY, N_NEW)) != list(
        generate(clm, PROMPT, 1.0, "logits", GREEDY, N_NEW)
    )


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("alpha", [0.5, 2.0, -0.5])
def test_any_alpha_matches_the_logits_api(clm, alpha: float, mode: str) -> None:
    got = list(generate(clm, PROMPT, alpha, mode, GREEDY, 8))
    assert got == greedy_from_scratch(clm, alpha, mode, 8)


def test_a_shared_prefix_is_not_decoded_again(clm, monkeypatch: pytest.MonkeyPatch) -> None:
    decoder = Decoder(clm)
    first = list(decoder.generate(PROMPT, 0.5, "logits", GREEDY, 6))
    decoded: list[int] = []
    original = clm.decode

    def counting_decode(tokens_by_seq, **kwargs):
        decoded.append(len(next(iter(tokens_by_seq.values()))))
        return original(tokens_by_seq, **kwargs)

    monkeypatch.setattr(clm, "decode", counting_decode)
    follow_up = PROMPT + first + [7, 8]
    second = list(decoder.generate(follow_up, 0.5, "logits", GREEDY, 6))
    # cached: the prompt and all generated tokens but the last; new: that one and 7, 8
    assert decoded[0] == 3
    monkeypatch.undo()
    assert second == list(generate(clm, follow_up, 0.5, "logits", GREEDY, 6))


def test_alpha_is_free_in_logits_mode_and_recomputes_in_embed_mode(clm) -> None:
    decoder = Decoder(clm)
    list(decoder.generate(PROMPT, 0.5, "logits", GREEDY, 4))
    assert not decoder.needs_recompute(2.0, "logits")
    assert decoder.needs_recompute(2.0, "embed")
    list(decoder.generate(PROMPT, 0.5, "embed", GREEDY, 4))
    assert decoder.needs_recompute(2.0, "embed")
    assert not decoder.needs_recompute(0.5, "embed")
    assert list(decoder.generate(PROMPT, 2.0, "embed", GREEDY, 6)) == list(
        generate(clm, PROMPT, 2.0, "embed", GREEDY, 6)
    )


def test_sampling_with_a_seed_repeats(clm) -> None:
    sampling = SamplingParams(temp=1.0, top_k=0, top_p=1.0, min_p=0.0, repeat_penalty=1.3, seed=42)
    first = list(generate(clm, PROMPT, 0.8, "logits", sampling, 20))
    assert first == list(generate(clm, PROMPT, 0.8, "logits", sampling, 20))
    assert len(first) == 20 and all(0 <= t < clm.n_vocab for t in first)
    other_seed = SamplingParams(temp=1.0, top_k=0, top_p=1.0, min_p=0.0, seed=43)
    assert first != list(generate(clm, PROMPT, 0.8, "logits", other_seed, 20))


def test_generation_stops_when_the_context_is_full(folder) -> None:
    with clm_local.load(folder / "clm.gguf", n_ctx=16, n_threads=1) as small:
        tokens = list(generate(small, PROMPT, 1.0, "logits", GREEDY, 100))
    assert len(PROMPT) + len(tokens) == 16 + 1  # the last token is yielded but never decoded


def test_a_plain_model_warns_once_and_ignores_alpha(folder) -> None:
    with clm_local.load(folder / "base.gguf", n_ctx=64, n_threads=1) as plain:
        decoder = Decoder(plain)
        with pytest.warns(UserWarning, match="no CLM pre-layer"):
            at_zero = list(decoder.generate(PROMPT, 0.0, "logits", GREEDY, 6))
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert list(decoder.generate(PROMPT, 3.0, "embed", GREEDY, 6)) == at_zero


@pytest.mark.parametrize(
    "params",
    [{"top_p": 0.0}, {"top_k": -1}, {"min_p": 1.5}, {"repeat_penalty": 0.0}, {"seed": -1}],
)
def test_bad_sampling_settings_are_refused(params: dict) -> None:
    with pytest.raises(ClmError):
        SamplingParams(**params)


def test_bad_alpha_mode_and_tokens_are_refused(clm) -> None:
    with pytest.raises(ClmError, match="alpha"):
        list(generate(clm, PROMPT, float("nan"), "logits"))
    with pytest.raises(ClmError, match="mode"):
        list(generate(clm, PROMPT, 1.0, "average"))
    with pytest.raises(ClmError, match="out of range"):
        list(generate(clm, [1, 10_000], 1.0, "logits"))
    with pytest.raises(ClmError, match="context"):
        list(generate(clm, [1] * 65, 1.0, "logits"))
