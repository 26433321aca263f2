"""Converted files run by the patched llama.cpp, against transformers and against the base file.

These need the runtime (`clm-local runtime install`) and skip with the reason when it is missing.
The transformers reference of a CLM model with P at `model.layers.0`:
- logits mode: z = alpha * z(all blocks) + (1 - alpha) * z(P skipped);
- embed mode: P's output h replaced by e + alpha * (h - e), then the base blocks.
"""

from __future__ import annotations

import json
from pathlib import Path

import gguf
import numpy as np
import pytest
from clm_local.converters.convert import ConvertOptions, convert
from test_convert_fixtures import (
    quantize_file,
    require_smollm2,
    smollm2_identity_checkpoint,
    smollm2_shaped_folder,
    tiny_pre_layer,
    write_checkpoint,
)
from tiny_gguf import make_tiny_model

from clm_local.errors import ClmError

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
tiny_hf = pytest.importorskip("tiny_hf")

ALPHAS = (0.0, 0.5, 1.0, 1.7)
MODES = ("logits", "embed")
TOKENS = [5, 17, 42, 99, 100, 7, 3, 250, 11, 64]


@pytest.fixture(scope="module")
def load():
    """clm_local.load, once the patched llama.cpp is installed."""
    from clm_local.runtime import library

    try:
        library.llama()
    except ClmError as error:
        pytest.skip(f"needs the patched runtime: {error}")
    import clm_local

    return lambda path: clm_local.load(path, n_ctx=256, n_threads=2)


def reference_logits(model, tokens: list[int], alpha: float, mode: str) -> np.ndarray:
    """CLM logits of an expanded transformers model (P = layer 0), computed in float32."""
    layers = model.model.layers
    ids = torch.tensor([tokens])

    def run() -> np.ndarray:
        with torch.no_grad():
            return model(input_ids=ids).logits[0].float().numpy()

    if mode == "logits":
        aligned = run()
        model.model.layers = layers[1:]
        try:
            reference = run()
        finally:
            model.model.layers = layers
        return alpha * aligned + (1 - alpha) * reference

    def blend(module, args, kwargs, output):
        embeddings = args[0] if args else kwargs["hidden_states"]
        hidden = output[0] if isinstance(output, tuple) else output
        mixed = embeddings + alpha * (hidden - embeddings)
        return (mixed, *output[1:]) if isinstance(output, tuple) else mixed

    hook = layers[0].register_forward_hook(blend, with_kwargs=True)
    try:
        return run()
    finally:
        hook.remove()


def assert_matches_transformers(clm_model, hf_model) -> None:
    aligned = reference_logits(hf_model, TOKENS, 1.0, "logits")
    base = reference_logits(hf_model, TOKENS, 0.0, "logits")
    assert np.abs(aligned - base).max() > 0.05  # P matters, so a wrong P could not pass
    tolerance = 2e-3 * max(1.0, float(np.abs(aligned).max()))
    for mode in MODES:
        for alpha in ALPHAS:
            expected = reference_logits(hf_model, TOKENS, alpha, mode)
            got = clm_model.logits(TOKENS, alpha=alpha, mode=mode)
            assert np.abs(got - expected).max() < tolerance, (mode, alpha)


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_converted_folder_matches_transformers(tmp_path: Path, load, arch: str) -> None:
    folder = tiny_hf.make_tiny_model(tmp_path / arch, arch)
    convert(folder, tmp_path / "clm.gguf", ConvertOptions())
    hf_model = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    assert_matches_transformers(load(tmp_path / "clm.gguf"), hf_model)


def test_grafted_checkpoint_matches_transformers(tmp_path: Path, load) -> None:
    """Base GGUF written by tiny_hf (its own q/k permutation), P from another model's block 0."""
    base_folder = tiny_hf.make_tiny_model(tmp_path / "base", "llama", seed=0)
    donor = transformers.AutoModelForCausalLM.from_pretrained(
        tiny_hf.make_tiny_model(tmp_path / "p", "llama", seed=1)
    )
    base = tiny_hf.write_tiny_gguf(base_folder, tmp_path / "base.gguf")
    pre_layer = {k: v.numpy() for k, v in donor.state_dict().items() if k.startswith("model.layers.0.")}
    checkpoint = write_checkpoint(tmp_path / "ckpt", pre_layer, base)
    convert(checkpoint, tmp_path / "clm.gguf", ConvertOptions())

    # The same CLM model in transformers: the base's blocks moved up by one, the donor's block 0 first.
    config = json.loads((base_folder / "config.json").read_text())
    config["num_hidden_layers"] += 1
    expanded = transformers.LlamaForCausalLM(transformers.LlamaConfig(**config)).eval()
    state = {}
    for name, tensor in transformers.AutoModelForCausalLM.from_pretrained(base_folder).state_dict().items():
        parts = name.split(".")
        if parts[:2] == ["model", "layers"]:
            parts[2] = str(int(parts[2]) + 1)
        state[".".join(parts)] = tensor
    state.update({k: torch.from_numpy(v) for k, v in pre_layer.items()})
    expanded.load_state_dict(state)
    assert_matches_transformers(load(tmp_path / "clm.gguf"), expanded)


@pytest.mark.filterwarnings("ignore:.*has no CLM pre-layer")  # the base file, loaded on purpose
@pytest.mark.parametrize("arch", ["llama", "qwen2"])
@pytest.mark.parametrize("quantized", [False, True])
def test_graft_at_alpha_0_is_the_base(tmp_path: Path, load, arch: str, quantized: bool) -> None:
    model = make_tiny_model(arch, n_base_blocks=2)
    base = model.write(tmp_path / "base.gguf", "base")
    if quantized:
        base = quantize_file(base, tmp_path / "base-q8.gguf")
    checkpoint = write_checkpoint(tmp_path / "ckpt", tiny_pre_layer(model), base)
    convert(checkpoint, tmp_path / "clm.gguf", ConvertOptions())
    tokens = [t % 96 for t in TOKENS]
    base_logits = load(base).logits(tokens)
    clm_model = load(tmp_path / "clm.gguf")
    for mode in MODES:
        np.testing.assert_allclose(clm_model.logits(tokens, alpha=0.0, mode=mode), base_logits, atol=1e-4)
        assert np.abs(clm_model.logits(tokens, alpha=1.0, mode=mode) - base_logits).max() > 1e-2


@pytest.mark.filterwarnings("ignore:.*has no CLM pre-layer")
def test_smollm2_graft_with_an_untrained_p_is_the_base_at_every_alpha(tmp_path: Path, load) -> None:
    base = require_smollm2()
    convert(smollm2_identity_checkpoint(tmp_path / "ckpt"), tmp_path / "clm.gguf", ConvertOptions())
    tokens = [1, 9690, 198, 2683, 359, 253, 5356, 5646, 11, 2]
    base_logits = load(base).logits(tokens)
    clm_model = load(tmp_path / "clm.gguf")
    for mode in MODES:
        for alpha in (0.0, 1.7):  # P(x) == x exactly: only float summation order may differ
            np.testing.assert_allclose(
                clm_model.logits(tokens, alpha=alpha, mode=mode), base_logits, atol=1e-4
            )


def test_output_loads_as_an_ordinary_model(tmp_path: Path, load) -> None:
    """Through llama-cpp-python's plain API (no CLM calls) the file is the aligned model, alpha = 1."""
    import llama_cpp

    folder = tiny_hf.make_tiny_model(tmp_path / "m", "qwen2")
    convert(folder, tmp_path / "clm.gguf", ConvertOptions())
    plain = llama_cpp.Llama(model_path=str(tmp_path / "clm.gguf"), n_ctx=64, logits_all=True, verbose=False)
    plain.eval(TOKENS)
    logits = np.array(plain.scores[: len(TOKENS)])
    np.testing.assert_allclose(logits, load(tmp_path / "clm.gguf").logits(TOKENS, alpha=1.0), atol=1e-3)


def test_converted_tokenizer_encodes_like_hugging_face(tmp_path: Path, load) -> None:
    import llama_cpp

    folder = smollm2_shaped_folder(tmp_path / "smol")
    convert(folder, tmp_path / "clm.gguf", ConvertOptions())
    assert gguf.GGUFReader(tmp_path / "clm.gguf").get_field("tokenizer.ggml.pre").contents() == "smollm"
    hf_tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    vocab = llama_cpp.Llama(model_path=str(tmp_path / "clm.gguf"), vocab_only=True, verbose=False)
    chat = hf_tokenizer.apply_chat_template([{"role": "user", "content": "Hi there!"}], tokenize=False)
    texts = [
        "Hello world",
        " leading space and  double  spaces\n\nnew lines\ttabs",
        "numbers 3.14159 and 1234567890, dates 2025-03-06",
        "unicode: café, naïve, 日本語, emoji 🚀🦙, Привет",
        "code: def f(x):\n    return x**2  # square",
        "I've been 'told he's there, 'RE you sure?",
        chat,
    ]
    for text in texts:
        expected = hf_tokenizer.encode(text)
        assert vocab.tokenize(text.encode(), add_bos=True, special=True) == expected, text


def test_quantize_goes_through_llama_cpp_and_keeps_the_clm_keys(tmp_path: Path, load) -> None:
    folder = tiny_hf.make_tiny_model(tmp_path / "m", "llama")
    convert(folder, tmp_path / "f32.gguf", ConvertOptions())
    convert(folder, tmp_path / "q8.gguf", ConvertOptions(quantize="q8_0", alpha_default=0.7))

    reader = gguf.GGUFReader(tmp_path / "q8.gguf")
    assert reader.get_field("clm.pre_layer_count").contents() == 1
    assert reader.get_field("clm.alpha_default").contents() == pytest.approx(0.7)
    assert reader.get_field("general.file_type").contents() == gguf.LlamaFileType.MOSTLY_Q8_0
    assert {t.tensor_type for t in reader.tensors if len(t.shape) == 2} == {gguf.GGMLQuantizationType.Q8_0}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f32.gguf", "m", "q8.gguf"]  # no temp files left

    exact, quantized = load(tmp_path / "f32.gguf"), load(tmp_path / "q8.gguf")
    for mode in MODES:
        expected = exact.logits(TOKENS, alpha=0.5, mode=mode)
        assert np.abs(quantized.logits(TOKENS, alpha=0.5, mode=mode) - expected).max() < 0.02


def test_quantize_refusals(tmp_path: Path, load) -> None:
    folder = tiny_hf.make_tiny_model(tmp_path / "m", "llama")
    with pytest.raises(ClmError, match="unknown quantization type 'Q3_X'; llama.cpp offers .*Q4_K_M"):
        convert(folder, tmp_path / "out.gguf", ConvertOptions(quantize="Q3_X"))

    model = make_tiny_model("llama", n_base_blocks=2)
    base = quantize_file(model.write(tmp_path / "base.gguf", "base"), tmp_path / "base-q8.gguf")
    checkpoint = write_checkpoint(tmp_path / "ckpt", tiny_pre_layer(model), base)
    with pytest.raises(ClmError, match=r"is already quantized \(Q8_0\); quantize from an F16, BF16 or F32"):
        convert(checkpoint, tmp_path / "out.gguf", ConvertOptions(quantize="Q4_0"))
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith((".out", "out"))]
