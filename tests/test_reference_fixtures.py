"""The fixtures and the numpy reference, checked without the runtime.

The transformers comparison is what makes the reference an oracle: an independent implementation
(HF Llama / Qwen2, float64) given the same weights must produce the same logits.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import gguf
import numpy as np
import pytest
from numpy_reference import forward, forward_plain, relative_error
from tiny_gguf import HF_BLOCK_MODULES, TinyModel, Variant, make_tiny_model

from clm_local.gguf import keys as gguf_keys

if TYPE_CHECKING:
    import torch  # optional (the train extra): the transformers tests skip without it

ARCHS = ("llama", "qwen2")
TOKENS = np.random.default_rng(123).integers(0, 96, size=24)


@pytest.fixture(params=ARCHS)
def model(request: pytest.FixtureRequest) -> TinyModel:
    return make_tiny_model(request.param, n_base_blocks=2)


def _field(reader: gguf.GGUFReader, key: str) -> object:
    field = reader.get_field(key)
    assert field is not None, f"missing key {key}"
    return field.contents()


# --- the writer ---------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ARCHS)
def test_clm_file_round_trips(tmp_path: Path, arch: str) -> None:
    path = tmp_path / "clm.gguf"
    model = make_tiny_model(arch, n_base_blocks=3, alpha_default=0.75, mix_default="embed")
    model.write(path)
    reader = gguf.GGUFReader(path)
    cfg = model.config

    assert _field(reader, gguf.Keys.General.ARCHITECTURE) == arch
    assert _field(reader, gguf.Keys.LLM.BLOCK_COUNT.format(arch=arch)) == 4
    assert _field(reader, gguf.Keys.LLM.VOCAB_SIZE.format(arch=arch)) == cfg.n_vocab
    assert _field(reader, gguf.Keys.LLM.EMBEDDING_LENGTH.format(arch=arch)) == cfg.n_embd
    assert _field(reader, gguf.Keys.LLM.FEED_FORWARD_LENGTH.format(arch=arch)) == cfg.n_ff
    assert _field(reader, gguf.Keys.Attention.HEAD_COUNT.format(arch=arch)) == cfg.n_head
    assert _field(reader, gguf.Keys.Attention.HEAD_COUNT_KV.format(arch=arch)) == cfg.n_head_kv
    assert _field(reader, gguf.Keys.Tokenizer.MODEL) == "none"
    assert _field(reader, gguf_keys.KEY_VERSION) == gguf_keys.CLM_VERSION
    assert _field(reader, gguf_keys.KEY_PRE_LAYER_COUNT) == 1
    assert _field(reader, gguf_keys.KEY_ALPHA_DEFAULT) == pytest.approx(0.75)
    assert _field(reader, gguf_keys.KEY_MIX_DEFAULT) == "embed"

    stored = {t.name: t for t in reader.tensors}
    assert stored.keys() == model.tensors.keys()
    for name, array in model.tensors.items():
        assert tuple(int(n) for n in stored[name].shape) == array.shape[::-1], name  # ggml ne order
        np.testing.assert_array_equal(stored[name].data, array, err_msg=name)
    n_bias = 3 * 4 if arch == "qwen2" else 0
    assert len(stored) == 3 + 9 * 4 + n_bias


@pytest.mark.parametrize(("variant", "block_count"), [("base", 2), ("plain_expanded", 3)])
def test_variants_hold_the_same_weights(tmp_path: Path, variant: Variant, block_count: int) -> None:
    model = make_tiny_model("qwen2", n_base_blocks=2)
    reader = gguf.GGUFReader(model.write(tmp_path / f"{variant}.gguf", variant))

    assert _field(reader, "qwen2.block_count") == block_count
    assert not [f for f in reader.fields if f.startswith("clm.")]
    stored = {t.name: t.data for t in reader.tensors}
    shift = 1 if variant == "base" else 0
    for index in range(block_count):
        for part, array in model.block(index + shift).items():
            np.testing.assert_array_equal(stored[f"blk.{index}.{part}"], array)
    assert f"blk.{block_count}.attn_q.weight" not in stored


def test_optional_keys_can_be_left_out(tmp_path: Path) -> None:
    path = tmp_path / "bare.gguf"
    make_tiny_model("llama", alpha_default=None, mix_default=None).write(path)
    fields = gguf.GGUFReader(path).fields
    assert gguf_keys.KEY_VERSION in fields
    assert gguf_keys.KEY_ALPHA_DEFAULT not in fields and gguf_keys.KEY_MIX_DEFAULT not in fields

    make_tiny_model("llama", clm_keys=False).write(path)
    assert not [f for f in gguf.GGUFReader(path).fields if f.startswith("clm.")]


def test_generation_is_deterministic_and_base_is_independent_of_p() -> None:
    a = make_tiny_model("llama", seed=7)
    b = make_tiny_model("llama", seed=7)
    assert all(np.array_equal(a.tensors[k], b.tensors[k]) for k in a.tensors)
    base_only = make_tiny_model("llama", seed=7, pre_layers=0)
    identity_p = make_tiny_model("llama", seed=7, with_p_random=False)
    for other in (base_only, identity_p):
        for mine, theirs in zip(a.base_blocks, other.base_blocks, strict=True):
            assert all(np.array_equal(mine[k], theirs[k]) for k in mine)
    other_seed = make_tiny_model("llama", seed=8)
    assert not np.array_equal(other_seed.tensors["token_embd.weight"], a.tensors["token_embd.weight"])


# --- the reference's CLM algebra ----------------------------------------------------------------


@pytest.mark.parametrize("mode", ["logits", "embed"])
def test_alpha_endpoints_are_the_two_paths(model: TinyModel, mode: str) -> None:
    np.testing.assert_allclose(forward(model, TOKENS, 0.0, mode), forward_plain(model, TOKENS, False))
    np.testing.assert_allclose(forward(model, TOKENS, 1.0, mode), forward_plain(model, TOKENS, True))


def test_p_is_not_identity_and_modes_differ_inside(model: TinyModel) -> None:
    """Without this, every alpha test above would pass against a runtime that ignores alpha."""
    assert relative_error(forward_plain(model, TOKENS, True), forward_plain(model, TOKENS, False)) > 0.2
    half = relative_error(forward(model, TOKENS, 0.5, "embed"), forward(model, TOKENS, 0.5, "logits"))
    assert half > 0.03  # well above the runtime tests' 1e-2 tolerance


def test_logits_mode_is_linear_in_alpha(model: TinyModel) -> None:
    z0, z1 = forward(model, TOKENS, 0.0), forward(model, TOKENS, 1.0)
    for alpha in (-0.5, 0.3, 1.7):
        np.testing.assert_allclose(forward(model, TOKENS, alpha), z0 + alpha * (z1 - z0), atol=1e-12)


def test_identity_pre_layer_makes_alpha_irrelevant() -> None:
    model = make_tiny_model("qwen2", with_p_random=False)
    expected = forward_plain(model, TOKENS, False)
    for mode in ("logits", "embed"):
        np.testing.assert_allclose(forward(model, TOKENS, 0.6, mode), expected, atol=1e-12)


def test_reference_is_causal(model: TinyModel) -> None:
    """Logits at position t depend only on tokens <= t (what a KV-cached runtime computes)."""
    full = forward(model, TOKENS, 0.5, "embed")
    prefix = forward(model, TOKENS[:10], 0.5, "embed")
    np.testing.assert_allclose(full[:10], prefix, atol=1e-12)


def test_relative_error() -> None:
    assert relative_error(np.array([1.0, -4.0]), np.array([1.0, -4.0])) == 0.0
    assert relative_error(np.array([1.5, -4.0]), np.array([1.0, -4.0])) == pytest.approx(0.125)


# --- the reference against transformers ---------------------------------------------------------


def _gguf_rope_rows_to_hf(w: np.ndarray, n_head: int) -> np.ndarray:
    """Undo convert_hf_to_gguf.py's q/k permute for llama (GGUF NORM pairs -> HF rotate_half)."""
    out, head_dim = w.shape[0], w.shape[0] // n_head
    return w.reshape(n_head, head_dim // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(out, *w.shape[1:])


def _hf_model(model: TinyModel, variant: Variant) -> torch.nn.Module:
    """A float64 HF LlamaForCausalLM / Qwen2ForCausalLM holding the tensors of a GGUF `variant`."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    cfg = model.config
    common = dict(
        vocab_size=cfg.n_vocab,
        hidden_size=cfg.n_embd,
        intermediate_size=cfg.n_ff,
        num_hidden_layers=model.block_count(variant),
        num_attention_heads=cfg.n_head,
        num_key_value_heads=cfg.n_head_kv,
        max_position_embeddings=cfg.n_ctx,
        rms_norm_eps=cfg.rms_eps,
        rope_theta=cfg.rope_theta,
        tie_word_embeddings=False,
    )
    if cfg.arch == "llama":
        hf_cfg = transformers.LlamaConfig(**common, attention_bias=False, mlp_bias=False)
        hf_cls = transformers.LlamaForCausalLM
    else:
        hf_cfg = transformers.Qwen2Config(**common)
        hf_cls = transformers.Qwen2ForCausalLM
    hf_cfg._attn_implementation = "eager"
    hf = hf_cls(hf_cfg).to(torch.float64).eval()

    def hf_name(name: str) -> str:
        if not name.startswith("blk."):
            top = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}
            stem, kind = name.rsplit(".", 1)
            return f"{top[stem]}.{kind}"
        _, index, part, kind = name.split(".")
        layer = HF_BLOCK_MODULES[part]
        return f"model.layers.{index}.{layer}.{kind}"

    state = {}
    for name, array in model.variant_tensors(variant).items():
        if cfg.arch == "llama" and (".attn_q." in name or ".attn_k." in name):
            array = _gguf_rope_rows_to_hf(array, cfg.n_head if ".attn_q." in name else cfg.n_head_kv)
        state[hf_name(name)] = torch.from_numpy(array.astype(np.float64))
    missing, unexpected = hf.load_state_dict(state, strict=False)
    assert not unexpected and not [k for k in missing if "rotary_emb" not in k], (missing, unexpected)
    return hf


@pytest.mark.parametrize(("variant", "alpha"), [("plain_expanded", 1.0), ("base", 0.0)])
def test_reference_matches_transformers(model: TinyModel, variant: Variant, alpha: float) -> None:
    torch = pytest.importorskip("torch")
    hf = _hf_model(model, variant)
    with torch.no_grad():
        expected = hf(torch.from_numpy(TOKENS)[None]).logits[0].numpy()
    for mode in ("logits", "embed"):
        assert relative_error(forward(model, TOKENS, alpha, mode), expected) < 1e-4
