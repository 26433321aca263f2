"""Every supported family end to end: tiny random transformers models, three conversion paths, the
patched llama.cpp, against transformers with the CLM blend (tiny_families.py makes the files).

For each family and each CLM file (paths a, b, c), in both modes at alpha in {-0.5, 0, 0.5, 1, 2}:
the runtime's logits match the transformers reference on a prompt longer than the sliding window;
alpha 0 equals the base loaded as an ordinary file, alpha 1 the expanded model loaded as one.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest

from clm_local.errors import ClmError

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
tiny_families = pytest.importorskip("tiny_families")

from clm_local.training.clm_block import bypass_pre_layer  # noqa: E402  (needs torch)

ALPHAS = (-0.5, 0.0, 0.5, 1.0, 2.0)
MODES = ("logits", "embed")
TOKENS = [5, 17, 42, 99, 100, 7, 3, 250, 11, 64, 2, 31]  # longer than tiny_families.SLIDING_WINDOW
RELATIVE_TOLERANCE = 2e-3  # of the largest logit, as in test_convert_runtime.py


@pytest.fixture(scope="module")
def load():
    from clm_local.runtime import library

    try:
        library.llama()
    except ClmError as error:
        pytest.skip(f"needs the patched runtime: {error}")
    import clm_local

    return lambda path: clm_local.load(path, n_ctx=64, n_threads=1)


@pytest.fixture(scope="module")
def converter(tmp_path_factory: pytest.TempPathFactory) -> Path | None:
    return tiny_families.llama_cpp_converter(tmp_path_factory.mktemp("llama_cpp"))


@pytest.fixture(scope="module", params=list(tiny_families.FAMILIES))
def family(request, tmp_path_factory, converter):
    return tiny_families.make_family_files(tmp_path_factory.mktemp(request.param), request.param, converter)


def reference_logits(model, tokens: list[int], alpha: float, mode: str) -> np.ndarray:
    """CLM logits of an expanded transformers model (P = layer 0) in float32.

    The reference path swaps P for a passthrough rather than dropping it, so that every base block
    keeps its index (Gemma picks each block's attention type and RoPE base by index)."""
    ids = torch.tensor([tokens])

    def run() -> np.ndarray:
        with torch.no_grad():
            return model(input_ids=ids).logits[0].float().numpy()

    if mode == "logits":
        aligned = run()
        with bypass_pre_layer(model):
            reference = run()
        return alpha * aligned + (1 - alpha) * reference

    def blend(module, args, kwargs, output):
        embeddings = args[0] if args else kwargs["hidden_states"]
        hidden = output[0] if isinstance(output, tuple) else output
        mixed = embeddings + alpha * (hidden - embeddings)
        return (mixed, *output[1:]) if isinstance(output, tuple) else mixed

    hook = model.model.layers[0].register_forward_hook(blend, with_kwargs=True)
    try:
        return run()
    finally:
        hook.remove()


def close(got: np.ndarray, expected: np.ndarray) -> bool:
    return float(np.abs(got - expected).max()) <= RELATIVE_TOLERANCE * max(1.0, float(np.abs(expected).max()))


def plain_logits(load, path: Path) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a plain file warns that alpha has no effect
        with load(path) as model:
            return model.logits(TOKENS)


@pytest.mark.parametrize("path", ["clm_a", "clm_b", "clm_c"])
def test_matches_transformers_at_every_alpha(family, load, path: str) -> None:
    if path not in family.files:
        pytest.skip("llama.cpp's converter is not available (the llama-cpp-python sdist is not cached)")
    hf_model = family.expanded_model()
    aligned = reference_logits(hf_model, TOKENS, 1.0, "logits")
    assert not close(reference_logits(hf_model, TOKENS, 0.0, "logits"), aligned)  # P matters
    with load(family.files[path]) as clm_model:
        # logits mode mixes before the head where the head is linear; Gemma 2 soft-caps its logits
        assert clm_model.mixes_before_head == (family.family != "gemma2")
        for mode in MODES:
            for alpha in ALPHAS:
                got = clm_model.logits(TOKENS, alpha=alpha, mode=mode)
                assert close(got, reference_logits(hf_model, TOKENS, alpha, mode)), (mode, alpha)


def test_alpha_0_is_the_base_file_and_alpha_1_the_expanded_file(family, load) -> None:
    if "base" not in family.files:
        pytest.skip("llama.cpp's converter is not available (the llama-cpp-python sdist is not cached)")
    base = plain_logits(load, family.files["base"])
    expanded = plain_logits(load, family.files["plain_expanded"])
    assert close(base, reference_logits(family.base_model(), TOKENS, 1.0, "logits"))
    for path in ("clm_a", "clm_b", "clm_c"):
        with load(family.files[path]) as clm_model:
            for mode in MODES:
                assert close(clm_model.logits(TOKENS, alpha=0.0, mode=mode), base), (path, mode)
                assert close(clm_model.logits(TOKENS, alpha=1.0, mode=mode), expanded), (path, mode)
    if family.family.startswith("gemma"):
        # llama.cpp's own file, with Gemma's sliding-window flags left to the block index: the base
        # blocks get their neighbours' attention types, which is why every path states the flags.
        assert not close(plain_logits(load, family.files["llama_cpp_expanded"]), expanded)


@pytest.mark.parametrize("name", list(tiny_families.FAMILIES))
def test_identity_at_initialisation_is_exact_and_trainable(tmp_path: Path, name: str) -> None:
    """P inserted by the training code reproduces the base bit for bit, and its first gradient is
    not zero (Gemma: through the zeroed post-norm gains, the other families through o/down_proj)."""
    from clm_local.training.clm_block import cached_logits, check_identity, insert_pre_layer, pre_layer_of

    model = tiny_families.load_hf(tiny_families.make_base_folder(tmp_path, name))
    ids = torch.tensor([TOKENS])
    base_logits = cached_logits(model, ids)
    insert_pre_layer(model)
    assert check_identity(model, base_logits, ids) == 0.0
    model(input_ids=ids).logits.square().mean().backward()
    gradients = [p.grad for p in pre_layer_of(model).parameters() if p.grad is not None]
    assert gradients and max(float(g.abs().max()) for g in gradients) > 0


@pytest.mark.parametrize("kind", ["hf", "gguf"])
def test_training_loads_the_base_as_llama_cpp_runs_it(family, kind: str) -> None:
    """The training code's base model (an HF folder, or the GGUF through transformers' reader plus
    the hyperparameters it misses) computes the base's logits."""
    from clm_local.training.base_model import base_architecture, load_model, resolve_base

    if kind == "gguf" and "base" not in family.files:
        pytest.skip("llama.cpp's converter is not available (the llama-cpp-python sdist is not cached)")
    if kind == "gguf" and family.family == "llama3-rope":
        pytest.skip("transformers' GGUF reader does not restore Llama 3 RoPE scaling (see the README)")
    source = resolve_base(family.files["base"] if kind == "gguf" else family.base_folder)
    assert base_architecture(source) == tiny_families.gguf_architecture(family.family)
    model = load_model(source, torch.float32, torch.device("cpu"))
    expected = reference_logits(family.base_model(), TOKENS, 1.0, "logits")
    with torch.no_grad():
        assert close(model(input_ids=torch.tensor([TOKENS])).logits[0].numpy(), expected)


def test_the_validator_applies_each_familys_rules(family, tmp_path: Path) -> None:
    """Each family's CLM file passes the GGUF validator, and one with a tensor its graph requires
    removed from a base block is refused by name before llama.cpp sees it."""
    import gguf
    from clm_local.converters.gguf_io import copy_metadata, copy_tensor, write_gguf

    from clm_local.gguf.check import ARCH_RULES, check_gguf

    source = family.files["clm_b"]
    check_gguf(source)
    reader = gguf.GGUFReader(source)
    arch = tiny_families.gguf_architecture(family.family)
    dropped = f"blk.1.{ARCH_RULES[arch].block_tensors[-1]}"
    broken = tmp_path / "broken.gguf"
    tensors = [copy_tensor(t) for t in reader.tensors if t.name != dropped]
    write_gguf(broken, arch, copy_metadata(reader, {}), tensors, force=False)
    with pytest.raises(ClmError, match=f"tensor {dropped} is missing"):
        check_gguf(broken)
