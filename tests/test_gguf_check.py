"""The GGUF validator: each metadata edit that once crashed llama.cpp or a Python reader is refused
by name, valid files pass, and the header reader skips the vocabulary instead of parsing it."""

from __future__ import annotations

import resource
from pathlib import Path

import gguf
import pytest
from gguf import GGUFValueType
from gguf_mutations import HUGE, apply, set_value
from tiny_gguf import make_tiny_model

from clm_local.errors import ClmError
from clm_local.gguf.check import check_gguf, tensors_with_non_finite_values
from clm_local.gguf.header import StringArray, read_header

U32, F32, STR = GGUFValueType.UINT32, GGUFValueType.FLOAT32, GGUFValueType.STRING


@pytest.fixture(scope="module")
def bases(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    folder = tmp_path_factory.mktemp("bases")
    files = {
        "llama": make_tiny_model("llama", n_embd=32, n_ff=64).write(folder / "llama.gguf"),
        "qwen2": make_tiny_model("qwen2", n_embd=32, n_ff=64).write(folder / "qwen2.gguf"),
    }
    return {name: path.read_bytes() for name, path in files.items()}


@pytest.fixture(scope="module")
def bpe_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny llama GGUF with a real byte-level BPE vocabulary (tokens, merges, chat template)."""
    pytest.importorskip("transformers")
    from tiny_hf import make_tiny_model as make_hf_model
    from tiny_hf import write_tiny_gguf

    folder = tmp_path_factory.mktemp("bpe")
    return write_tiny_gguf(make_hf_model(folder / "hf"), folder / "bpe.gguf")


def refusal(path: Path) -> str:
    with pytest.raises(ClmError) as caught:
        check_gguf(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: ") and "\n" not in message
    return message


def mutated(tmp_path: Path, data: bytes) -> Path:
    path = tmp_path / "mutated.gguf"
    path.write_bytes(data)
    return path


def test_valid_files_pass(bases: dict[str, bytes], tmp_path: Path) -> None:
    for name, data in bases.items():
        header = check_gguf(mutated(tmp_path, data))
        assert header.values["general.architecture"] == name
        assert len(header.tensors) == len(gguf.GGUFReader(tmp_path / "mutated.gguf").tensors)


@pytest.mark.parametrize(
    ("arch", "key", "vtype", "value", "expected"),
    [
        ("llama", "llama.block_count", U32, 513, "llama.block_count is 513; llama.cpp loads 1 to 512 blocks"),
        ("llama", "llama.attention.layer_norm_rms_epsilon", F32, float("nan"), "must be finite and positive"),
        ("qwen2", "qwen2.attention.layer_norm_rms_epsilon", F32, -1e-5, "must be finite and positive"),
        (
            "qwen2",
            "qwen2.rope.dimension_count",
            U32,
            4,
            "qwen2.rope.dimension_count is 4 but the head size is 8",
        ),
        (
            "llama",
            "clm.pre_layer_count",
            U32,
            1 << 31,
            "clm.pre_layer_count is 2147483648, but the model has",
        ),
        ("llama", "clm.pre_layer_count", GGUFValueType.INT32, 1, "clm.pre_layer_count must be a uint32"),
        ("llama", "clm.alpha_default", F32, float("inf"), "clm.alpha_default is inf"),
        ("llama", "clm.mix_default", STR, "both", "clm.mix_default is 'both'"),
        ("llama", "llama.attention.head_count_kv", U32, 0, "0 key/value heads"),
        ("llama", "llama.expert_used_count", U32, 2, "but the model has no experts"),
        ("llama", "llama.rope.scaling.type", STR, "bogus", "llama.rope.scaling.type is 'bogus'"),
        (
            "llama",
            "tokenizer.chat_template",
            STR,
            b"{{ \xc3\x28 }}",
            "tokenizer.chat_template is not valid UTF-8",
        ),
        (
            "llama",
            "tokenizer.ggml.model",
            STR,
            "bert",
            "tokenizer.ggml.model is 'bert', not one clm-local runs",
        ),
        (
            "llama",
            "llama.feed_forward_length",
            U32,
            1 << 31,
            "tensor blk.0.ffn_gate.weight has shape [32, 64]",
        ),
    ],
)
def test_metadata_llama_cpp_would_abort_on_is_refused_by_name(
    bases: dict[str, bytes],
    tmp_path: Path,
    arch: str,
    key: str,
    vtype: GGUFValueType,
    value: object,
    expected: str,
) -> None:
    assert expected in refusal(mutated(tmp_path, set_value(bases[arch], key, vtype, value)))


@pytest.mark.parametrize(
    ("recipe", "expected"),
    [
        ({"op": "count", "field": "n_kv", "value": HUGE}, "claims 1152921504606846976 metadata entries"),
        ({"op": "count", "field": "n_tensors", "value": HUGE}, "claims 1152921504606846976 tensors"),
        ({"op": "string_length", "key": "general.name", "value": HUGE}, "the value of general.name needs"),
        ({"op": "type_tag", "key": "llama.block_count", "type": 77}, "unknown value type 77"),
        ({"op": "tensor_field", "index": 0, "field": "type", "value": 99}, "has an unknown type 99"),
        ({"op": "tensor_field", "index": 0, "field": "offset", "value": HUGE}, "truncated GGUF: tensor"),
        ({"op": "tensor_field", "index": 2, "field": "offset", "value": 32}, "overlap in the file"),
        (
            {"op": "tensor_field", "index": 2, "field": "offset", "value": 4},
            "not a multiple of the alignment 32",
        ),
        ({"op": "tensor_field", "index": 0, "field": "n_dims", "value": 7}, "has 7 dimensions"),
        ({"op": "truncate", "fraction": 0.6}, "truncated GGUF: tensor"),
    ],
)
def test_structure_problems_are_refused(
    bases: dict[str, bytes], tmp_path: Path, recipe: dict, expected: str
) -> None:
    assert expected in refusal(mutated(tmp_path, apply({"base": "llama", **recipe}, bases)))


def test_a_block_without_a_required_tensor_is_refused(bases: dict[str, bytes], tmp_path: Path) -> None:
    names = [t.name for t in read_header(mutated(tmp_path, bases["llama"])).tensors]
    rename = {
        "op": "tensor_field",
        "index": names.index("blk.1.attn_q.weight"),
        "field": "name",
        "value": "blk.1.attn_x.weight",
    }
    assert "tensor blk.1.attn_q.weight is missing" in refusal(
        mutated(tmp_path, apply({"base": "llama", **rename}, bases))
    )


def test_an_array_typed_architecture_is_refused_without_allocating(
    bases: dict[str, bytes], tmp_path: Path
) -> None:
    """gguf-py's reader grew past 7 GB on this file; the header reader refuses it at once."""
    path = mutated(
        tmp_path,
        apply(
            {
                "base": "llama",
                "op": "type_tag",
                "key": "general.architecture",
                "type": int(GGUFValueType.ARRAY),
            },
            bases,
        ),
    )
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    assert "more than the file can hold" in refusal(path)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 50 * 1024  # KiB


def test_tokenizer_model_must_match_the_vocabulary(bpe_file: Path, tmp_path: Path) -> None:
    data = bpe_file.read_bytes()
    check_gguf(bpe_file)
    spm = refusal(mutated(tmp_path, set_value(data, "tokenizer.ggml.model", STR, "llama")))
    assert "'llama' (SentencePiece) but the vocabulary has BPE merges" in spm
    none = refusal(mutated(tmp_path, set_value(data, "tokenizer.ggml.model", STR, "none")))
    assert "'none' (no vocabulary) but the file has one of" in none
    no_merges = apply({"base": "bpe", "op": "delete", "key": "tokenizer.ggml.merges"}, {"bpe": data})
    assert "no tokenizer.ggml.merges" in refusal(mutated(tmp_path, no_merges))


def test_the_vocabulary_is_skipped_not_parsed(bpe_file: Path) -> None:
    header = read_header(bpe_file)
    tokens = header.values["tokenizer.ggml.tokens"]
    assert isinstance(tokens, StringArray)
    reader = gguf.GGUFReader(bpe_file)
    assert list(header.strings("tokenizer.ggml.tokens")) == [
        bytes(reader.fields["tokenizer.ggml.tokens"].parts[i])
        for i in reader.fields["tokenizer.ggml.tokens"].data
    ]


def test_non_finite_weights_are_found(bases: dict[str, bytes], tmp_path: Path) -> None:
    clean = check_gguf(mutated(tmp_path, bases["qwen2"]))
    assert tensors_with_non_finite_values(clean) == []
    poisoned = check_gguf(mutated(tmp_path, apply({"base": "qwen2", "op": "nan_weights", "index": 0}, bases)))
    assert tensors_with_non_finite_values(poisoned) == [poisoned.tensors[0].name]


def _vocabulary_file(path: Path, n_items: int) -> Path:
    writer = gguf.GGUFWriter(path, "llama")
    writer.add_token_list([f"tok{i}" for i in range(n_items)])
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_a_walked_vocabulary_is_remembered_only_while_its_bytes_are_unchanged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The second read takes the walk's result from the cache (gguf_string_cache.py); an edit in
    place that keeps size and timestamps is still caught: an entry holds only for the same bytes."""
    import json
    import os

    monkeypatch.setenv("CLM_LOCAL_CACHE", str(tmp_path / "cache"))
    path = _vocabulary_file(tmp_path / "vocab.gguf", 5000)
    tokens = read_header(path).values["tokenizer.ggml.tokens"]
    assert tokens == StringArray(5000, tokens.offset, 5000)

    (entry_file,) = (tmp_path / "cache" / "gguf-strings").iterdir()
    entry = json.loads(entry_file.read_text())
    entry["arrays"][str(tokens.offset)][2] = 4999  # a mark only a cache hit can return
    entry_file.write_text(json.dumps(entry))
    assert read_header(path).values["tokenizer.ggml.tokens"].distinct == 4999

    stat = path.stat()
    data = bytearray(path.read_bytes())
    where = data.index(b"tok4321")
    data[where : where + 3] = b"\xff\xfe\xfd"  # same length, not UTF-8
    path.write_bytes(bytes(data))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    with pytest.raises(ClmError, match="not valid UTF-8"):
        read_header(path)


# --- the other families' graphs (tiny CLM files made with transformers) -------------------------

FAMILIES = ("qwen3", "gemma2", "gemma3", "phi3")
HEAD_SIZE = 16  # of every tiny family file (tiny_families: 64 wide, 4 heads or head_dim 16)


@pytest.fixture(scope="module")
def family_bases(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    pytest.importorskip("transformers")
    from fuzz_runner import write_family_bases

    paths = write_family_bases(tmp_path_factory.mktemp("families"))
    return {name.removesuffix("_clm"): path.read_bytes() for name, path in paths.items()}


@pytest.mark.parametrize("family", FAMILIES)
def test_valid_family_files_pass(family_bases: dict[str, bytes], tmp_path: Path, family: str) -> None:
    assert check_gguf(mutated(tmp_path, family_bases[family])).values["general.architecture"] == family


@pytest.mark.parametrize("family", ("llama", "qwen2", *FAMILIES))
@pytest.mark.parametrize("n_rot", [HEAD_SIZE + 1, HEAD_SIZE + 2, 4096, 7, 0])
def test_a_rope_dimension_ggml_cannot_rotate_is_refused(
    bases: dict[str, bytes], family_bases: dict[str, bytes], tmp_path: Path, family: str, n_rot: int
) -> None:
    """ggml's rope asserts n_dims <= the head size and n_dims even (a process abort at the first
    decode: phi3 with 17 did it) and loops forever on 0 (gemma2, gemma3, phi3 hung); llama, qwen2
    and qwen3 need it equal to the head size."""
    data = {**bases, **family_bases}[family]
    message = refusal(mutated(tmp_path, set_value(data, f"{family}.rope.dimension_count", U32, n_rot)))
    assert f"{family}.rope.dimension_count is {n_rot}" in message


@pytest.mark.parametrize("family", ("gemma2", "gemma3", "phi3"))
def test_a_partial_even_rope_dimension_passes_where_the_graph_allows_it(
    family_bases: dict[str, bytes], tmp_path: Path, family: str
) -> None:
    check_gguf(mutated(tmp_path, set_value(family_bases[family], f"{family}.rope.dimension_count", U32, 6)))


def _vectors(data: bytes) -> list[str]:
    from gguf_mutations import layout

    where = layout(data)
    return [name for name, n_dims in zip(where.tensor_names, where.tensor_dims, strict=True) if n_dims == 1]


@pytest.mark.parametrize("family", ("llama", "qwen2", *FAMILIES))
def test_every_norm_and_bias_must_be_f32(
    bases: dict[str, bytes], family_bases: dict[str, bytes], tmp_path: Path, family: str
) -> None:
    """ggml-cpu's binary ops abort on an F16 or BF16 operand with F32 activations (gemma2's
    output_norm.weight as F16: "binary_op: unsupported types"); the graphs multiply by every norm
    (post norms, q/k norms included) and add every bias."""
    all_bases = {**bases, **family_bases}
    names = _vectors(all_bases[family])
    assert any(name.endswith("norm.weight") for name in names)
    for name in names:
        for ggml_type, type_name in ((1, "F16"), (30, "BF16")):
            recipe = {
                "base": family,
                "op": "tensor_field",
                "index": name,
                "field": "type",
                "value": ggml_type,
            }
            message = refusal(mutated(tmp_path, apply(recipe, all_bases)))
            assert f"tensor {name} (a norm, bias or RoPE factor vector) is stored as {type_name}" in message


@pytest.mark.parametrize(
    ("family", "key", "vtype", "value", "expected"),
    [
        ("gemma2", "gemma2.attn_logit_softcapping", F32, 0.0, "is 0; the gemma2 graph divides by it"),
        ("gemma2", "gemma2.final_logit_softcapping", F32, 0.0, "is 0; the gemma2 graph divides by it"),
        ("gemma3", "gemma3.final_logit_softcapping", F32, float("nan"), "a soft-cap must be a finite"),
        ("gemma2", "gemma2.attn_logit_softcapping", F32, float("inf"), "a soft-cap must be a finite"),
        ("gemma3", "gemma3.rope.freq_base_swa", F32, float("nan"), "must be finite and positive"),
        ("qwen3", "qwen3.rope.freq_base", F32, 0.0, "must be finite and positive"),
        ("phi3", "phi3.attention.key_length", U32, 8, "key_length (8) and value_length (16) differ"),
        ("gemma3", "gemma3.rope.dimension_count_swa", U32, 18, "rope.dimension_count_swa is 18"),
        ("gemma2", "gemma2.attention.key_length_swa", U32, 8, "uses one head size for every block"),
    ],
)
def test_family_hyperparameters_the_graph_cannot_run_are_refused(
    family_bases: dict[str, bytes],
    tmp_path: Path,
    family: str,
    key: str,
    vtype: GGUFValueType,
    value: object,
    expected: str,
) -> None:
    assert expected in refusal(mutated(tmp_path, set_value(family_bases[family], key, vtype, value)))


def test_gemma3_may_turn_soft_capping_off(family_bases: dict[str, bytes], tmp_path: Path) -> None:
    """Gemma 3 skips the final soft-cap when it is 0 (models/gemma3.cpp); Gemma 2 divides by it."""
    no_cap = set_value(family_bases["gemma3"], "gemma3.final_logit_softcapping", F32, 0.0)
    check_gguf(mutated(tmp_path, no_cap))
