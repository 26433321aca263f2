"""Path (b): an expanded Hugging Face folder to GGUF, and path (c) on llama.cpp's own output.

The strongest check needs no runtime: when the llama-cpp-python source that the runtime is built
from is in the cache, llama.cpp's own convert_hf_to_gguf.py converts the same folder and the two
files must agree key for key and tensor for tensor (it needs a tokenizer llama.cpp recognises, so
that test borrows SmolLM2's from the real model file).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import gguf
import numpy as np
import pytest
from clm_local.converters.convert import ConvertOptions, convert
from clm_local.converters.hf_tensors import llama_permute
from test_convert_fixtures import raw_fields, smollm2_shaped_folder, value

from clm_local.errors import ClmError
from clm_local.files import cache_dir

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
tiny_hf = pytest.importorskip("tiny_hf")

F32 = gguf.GGMLQuantizationType.F32


def _convert(folder: Path, out: Path, **options: object) -> gguf.GGUFReader:
    convert(folder, out, ConvertOptions(**options))
    return gguf.GGUFReader(out)


def _tensor(reader: gguf.GGUFReader, name: str) -> np.ndarray:
    tensor = next(t for t in reader.tensors if t.name == name)
    ne = tuple(int(n) for n in tensor.shape)
    return gguf.quants.dequantize(tensor.data, tensor.tensor_type).reshape(tuple(reversed(ne)))


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_tiny_folder_converts_with_metadata_tokenizer_and_weights(tmp_path: Path, arch: str, capsys) -> None:
    folder = tiny_hf.make_tiny_model(tmp_path / arch, arch)
    reader = _convert(folder, tmp_path / "out.gguf", alpha_default=1.5)
    config = json.loads((folder / "config.json").read_text())

    assert value(reader, "general.architecture") == arch
    assert value(reader, f"{arch}.block_count") == config["num_hidden_layers"]
    assert value(reader, f"{arch}.embedding_length") == config["hidden_size"]
    assert value(reader, f"{arch}.feed_forward_length") == config["intermediate_size"]
    assert value(reader, f"{arch}.attention.head_count") == config["num_attention_heads"]
    assert value(reader, f"{arch}.attention.head_count_kv") == config["num_key_value_heads"]
    assert value(reader, f"{arch}.context_length") == config["max_position_embeddings"]
    assert value(reader, f"{arch}.rope.freq_base") == pytest.approx(config["rope_parameters"]["rope_theta"])
    assert value(reader, f"{arch}.attention.layer_norm_rms_epsilon") == pytest.approx(config["rms_norm_eps"])
    assert value(reader, "clm.pre_layer_count") == 1
    assert value(reader, "clm.alpha_default") == pytest.approx(1.5)
    assert value(reader, "clm.mix_default") == "logits"

    # The tokenizer, as llama.cpp will read it.
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    vocab = tokenizer.get_vocab()
    tokens = value(reader, "tokenizer.ggml.tokens")
    assert tokens == sorted(vocab, key=vocab.get)
    merges = json.loads((folder / "tokenizer.json").read_text())["model"]["merges"]
    assert value(reader, "tokenizer.ggml.merges") == [
        m if isinstance(m, str) else " ".join(m) for m in merges
    ]
    types = value(reader, "tokenizer.ggml.token_type")
    for special in tiny_hf.SPECIAL_TOKENS:
        assert types[vocab[special]] == gguf.TokenType.CONTROL
    assert types[vocab["a"]] == gguf.TokenType.NORMAL
    assert value(reader, "tokenizer.ggml.model") == "gpt2"
    assert value(reader, "tokenizer.ggml.pre") == "default"  # a made-up tokenizer: unknown to llama.cpp
    assert "pre-tokenizer not recognised" in capsys.readouterr().err
    assert value(reader, "tokenizer.ggml.bos_token_id") == tokenizer.bos_token_id
    assert value(reader, "tokenizer.ggml.eos_token_id") == tokenizer.eos_token_id
    assert value(reader, "tokenizer.ggml.padding_token_id") == tokenizer.pad_token_id
    assert value(reader, "tokenizer.ggml.add_bos_token") is False  # the HF tokenizer adds none
    assert value(reader, "tokenizer.chat_template") == tiny_hf.CHATML_TEMPLATE

    # Weights: same values, q/k rows in llama.cpp's order for llama only.
    state = transformers.AutoModelForCausalLM.from_pretrained(folder).state_dict()
    heads = config["num_attention_heads"], config["num_key_value_heads"]
    q = state["model.layers.0.self_attn.q_proj.weight"].numpy()
    k = state["model.layers.1.self_attn.k_proj.weight"].numpy()
    if arch == "llama":
        q, k = llama_permute(q, heads[0]), llama_permute(k, heads[1])
    np.testing.assert_array_equal(_tensor(reader, "blk.0.attn_q.weight"), q)
    np.testing.assert_array_equal(_tensor(reader, "blk.1.attn_k.weight"), k)
    np.testing.assert_array_equal(_tensor(reader, "output.weight"), state["lm_head.weight"].numpy())
    assert {t.tensor_type for t in reader.tensors} == {F32}


def test_bf16_folder_stays_bf16_and_exact(tmp_path: Path) -> None:
    folder = tiny_hf.make_tiny_model(tmp_path / "fp32", "llama")
    model = transformers.AutoModelForCausalLM.from_pretrained(folder).to(torch.bfloat16)
    model.save_pretrained(tmp_path / "bf16")
    transformers.AutoTokenizer.from_pretrained(folder).save_pretrained(tmp_path / "bf16")
    reader = _convert(tmp_path / "bf16", tmp_path / "out.gguf")
    types = {t.name: t.tensor_type for t in reader.tensors}
    assert types["blk.1.ffn_up.weight"] == gguf.GGMLQuantizationType.BF16
    assert types["blk.1.ffn_norm.weight"] == F32
    state = {k: v.float().numpy() for k, v in model.state_dict().items()}
    np.testing.assert_array_equal(
        _tensor(reader, "blk.1.ffn_up.weight"), state["model.layers.1.mlp.up_proj.weight"]
    )
    q = llama_permute(state["model.layers.0.self_attn.q_proj.weight"], model.config.num_attention_heads)
    np.testing.assert_array_equal(_tensor(reader, "blk.0.attn_q.weight"), q)  # reordered as raw bf16 bits
    assert value(reader, "general.file_type") == gguf.LlamaFileType.MOSTLY_BF16


@pytest.mark.parametrize("outtype", ["f16", "q8_0"])
def test_outtype_converts_matrices_and_keeps_vectors_f32(tmp_path: Path, outtype: str) -> None:
    folder = tiny_hf.make_tiny_model(tmp_path / "m", "qwen2")
    reader = _convert(folder, tmp_path / "out.gguf", outtype=outtype)
    matrix_type = gguf.GGMLQuantizationType[outtype.upper()]
    for tensor in reader.tensors:
        assert tensor.tensor_type == (F32 if len(tensor.shape) == 1 else matrix_type), tensor.name
    assert value(reader, "general.file_type") == {"f16": 1, "q8_0": 7}[outtype]


def test_tied_embeddings_and_sharded_weights(tmp_path: Path) -> None:
    folder = tiny_hf.make_tiny_model(tmp_path / "m", "qwen2")
    model = transformers.AutoModelForCausalLM.from_pretrained(folder)
    model.config.tie_word_embeddings = True
    model.tie_weights()
    model.save_pretrained(tmp_path / "tied", max_shard_size="20KB")
    transformers.AutoTokenizer.from_pretrained(folder).save_pretrained(tmp_path / "tied")
    assert (tmp_path / "tied" / "model.safetensors.index.json").is_file()
    reader = _convert(tmp_path / "tied", tmp_path / "out.gguf")
    names = {t.name for t in reader.tensors}
    assert "output.weight" not in names  # llama.cpp reuses token_embd
    assert {"token_embd.weight", "output_norm.weight", "blk.1.attn_q.bias"} <= names


def test_llama3_rope_scaling_becomes_rope_freqs(tmp_path: Path) -> None:
    folder = tiny_hf.make_tiny_model(tmp_path / "m", "llama")
    config = json.loads((folder / "config.json").read_text())
    config["rope_parameters"] = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
                                 "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                 "original_max_position_embeddings": 64}  # fmt: skip
    (folder / "config.json").write_text(json.dumps(config))
    reader = _convert(folder, tmp_path / "out.gguf")
    factors = _tensor(reader, "rope_freqs.weight")
    assert factors.shape == (4,)  # head_dim 8 / 2
    assert factors[0] == 1.0 and factors[-1] == 8.0  # high frequencies kept, low ones scaled


# --- refusals ---------------------------------------------------------------------------------


def _refused(folder: Path, out: Path, match: str, **options: object) -> None:
    with pytest.raises(ClmError, match=match):
        convert(folder, out, ConvertOptions(**options))
    assert not out.exists()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")]


def _edit_config(folder: Path, **changes: object) -> None:
    config = json.loads((folder / "config.json").read_text())
    for key, new in changes.items():
        if new is None:
            del config[key]
        else:
            config[key] = new
    (folder / "config.json").write_text(json.dumps(config))


def test_refuses_broken_or_unsupported_folders(tmp_path: Path) -> None:
    out = tmp_path / "out.gguf"
    folder = tiny_hf.make_tiny_model(tmp_path / "m", "llama")
    _refused(folder, out, "too few for 2 pre-layer", pre_layers=2)
    _refused(folder, out, "apply to training checkpoints only", base=tmp_path / "x.gguf")

    _edit_config(folder, hidden_size=None)
    _refused(folder, out, "lacks 'hidden_size'")
    _edit_config(folder, hidden_size=32, model_type="gpt2")
    _refused(folder, out, "architecture 'gpt2' is not supported")
    _edit_config(folder, model_type="llama")

    weights = folder / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[:-64])
    _refused(folder, out, "truncated")
    weights.unlink()
    (folder / "pytorch_model.bin").write_bytes(b"")
    _refused(folder, out, "no \\*.safetensors weights")


def test_refuses_missing_blocks_and_non_bpe_tokenizers(tmp_path: Path) -> None:
    out = tmp_path / "out.gguf"
    folder = tiny_hf.make_tiny_model(tmp_path / "m", "llama")
    _edit_config(folder, num_hidden_layers=3)  # the weights hold 2 blocks
    _refused(folder, out, "block 2 does not have the same tensors as block 0")
    _edit_config(folder, num_hidden_layers=2)

    (folder / "tokenizer.json").unlink()
    _refused(folder, out, "no tokenizer.json")


# --- cross-check against llama.cpp's own converter --------------------------------------------


@pytest.fixture(scope="module")
def llama_cpp_converter(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """convert_hf_to_gguf.py (with its gguf-py) from the llama-cpp-python sdist the runtime builds."""
    archives = sorted((cache_dir() / "downloads").glob("llama_cpp_python-*.tar.gz"))
    if not archives:
        pytest.skip("the llama-cpp-python source is not cached (clm-local runtime install fetches it)")
    root = tmp_path_factory.mktemp("llama_cpp")
    with tarfile.open(archives[-1]) as archive:
        wanted = (
            "/vendor/llama.cpp/convert_hf_to_gguf.py",
            "/vendor/llama.cpp/conversion/",
            "/vendor/llama.cpp/gguf-py/",
        )
        members = [m for m in archive.getmembers() if any(w in m.name for w in wanted)]
        archive.extractall(root, members=members, filter="data")
    script = next(root.glob("*/vendor/llama.cpp/convert_hf_to_gguf.py"))
    # llama.cpp imports sentencepiece before it looks for tokenizer.model; BPE folders never use it.
    stub = root / "stub" / "sentencepiece"
    stub.mkdir(parents=True)
    (stub / "__init__.py").write_text("class SentencePieceProcessor:\n    pass\n")
    return script


def test_same_file_as_llama_cpp_converter(tmp_path: Path, llama_cpp_converter: Path) -> None:
    # llama3 rope scaling on top, so that the rope_freqs tensor is compared too.
    rope = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 64}  # fmt: skip
    folder = smollm2_shaped_folder(tmp_path / "smol", rope)
    theirs = tmp_path / "theirs.gguf"
    env = dict(os.environ, PYTHONPATH=str(llama_cpp_converter.parents[3] / "stub"))
    subprocess.run(
        [sys.executable, str(llama_cpp_converter), str(folder), "--outfile", str(theirs), "--outtype", "f32"],
        check=True, capture_output=True, env=env,
    )  # fmt: skip
    ours = _convert(folder, tmp_path / "ours.gguf", outtype="f32")
    reference = gguf.GGUFReader(theirs)

    assert value(ours, "tokenizer.ggml.pre") == "smollm"
    ours_fields, their_fields = raw_fields(ours), raw_fields(reference)
    # We always state whether BOS/EOS are added (measured on the HF tokenizer); llama.cpp leaves a
    # flag out when the config is silent, and its default for this vocabulary is False too.
    explicit = {k for k in ours_fields if k not in their_fields and not k.startswith("clm.")}
    assert explicit <= {"tokenizer.ggml.add_bos_token", "tokenizer.ggml.add_eos_token"}
    assert all(value(ours, k) is False for k in explicit)
    assert {k for k in their_fields if ours_fields[k] != their_fields[k]} == set()
    assert [t.name for t in ours.tensors] == [t.name for t in reference.tensors]
    for mine, expected in zip(ours.tensors, reference.tensors, strict=True):
        assert mine.tensor_type == expected.tensor_type, mine.name
        assert mine.data.tobytes() == expected.data.tobytes(), mine.name

    # Path (c) on llama.cpp's file: its keys and tensors byte for byte, plus the clm.* keys.
    via_keys = tmp_path / "via_keys.gguf"
    convert(theirs, via_keys, ConvertOptions())
    added = gguf.GGUFReader(via_keys)
    assert {k: v for k, v in raw_fields(added).items() if not k.startswith("clm.")} == their_fields
    assert {k: v for k, v in raw_fields(added).items() if k.startswith("clm.")} == {
        k: v for k, v in ours_fields.items() if k.startswith("clm.")
    }
    assert [t.data.tobytes() for t in added.tensors] == [t.data.tobytes() for t in reference.tensors]


def test_an_ordinary_folder_is_refused_unless_trusted(tmp_path: Path) -> None:
    folder = tiny_hf.make_tiny_model(tmp_path / "m", "llama", expanded=False)
    out = tmp_path / "out.gguf"
    result = subprocess.run(
        [sys.executable, "-m", "clm_local.cli.main", "convert", str(folder), str(out)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 1 and not out.exists()
    assert result.stderr.count("\n") == 1 and "block 0 does not look like a pre-layer" in result.stderr
    trusted = subprocess.run(
        [sys.executable, "-m", "clm_local.cli.main", "convert", str(folder), str(out), "--trust-layout"],
        capture_output=True,
        text=True,
    )
    assert trusted.returncode == 0, trusted.stderr
    assert out.is_file()
