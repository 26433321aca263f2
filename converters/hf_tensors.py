"""Hugging Face tensors to GGUF tensors: names, the llama q/k row order, Gemma's norm gains, stored type.

Both the graft (P alone) and the full conversion (every tensor) go through `to_gguf_tensor`, so a
P grafted onto a base file and the same P converted from an expanded folder are bit-identical.

Four rules copied from llama.cpp's convert_hf_to_gguf.py, because the runtime expects them:
- names: gguf-py's tensor name map (`model.layers.0.self_attn.q_proj.weight` -> `blk.0.attn_q.weight`);
- for the llama architecture, q_proj/k_proj rows are reordered (`LlamaModel.permute`): llama.cpp
  applies rotary embeddings to adjacent pairs of a head's dimensions where Hugging Face rotates the
  two halves; the other families use llama.cpp's NEOX rope, which rotates halves, so rows stay;
- Gemma's RMSNorm multiplies by (1 + w): llama.cpp stores every `*norm.weight` as w + 1;
- 1-D tensors and norms are stored as F32 whatever the requested type.
"""

from __future__ import annotations

from dataclasses import dataclass

import gguf
import numpy as np
from gguf import GGMLQuantizationType

from clm_local.errors import ClmError
from clm_local.gguf.keys import GEMMA_NORM_ARCHITECTURES

from .gguf_io import OutputTensor
from .safetensors_io import SafeTensor

LLAMA_CPP_ARCHS = {
    "llama": gguf.MODEL_ARCH.LLAMA,
    "qwen2": gguf.MODEL_ARCH.QWEN2,
    "qwen3": gguf.MODEL_ARCH.QWEN3,
    "gemma2": gguf.MODEL_ARCH.GEMMA2,
    "gemma3": gguf.MODEL_ARCH.GEMMA3,
    "phi3": gguf.MODEL_ARCH.PHI3,
}

# --outtype values: "auto" keeps each tensor's own float type (F32, F16 or BF16; F64 becomes F32).
OUTTYPES = ("auto", "f32", "f16", "bf16", "q8_0")
_FIXED_TYPES = {
    "f32": GGMLQuantizationType.F32,
    "f16": GGMLQuantizationType.F16,
    "bf16": GGMLQuantizationType.BF16,
    "q8_0": GGMLQuantizationType.Q8_0,
}
# safetensors types whose bytes are also the GGUF encoding of a type (both little-endian).
_SAME_ENCODING = {
    "F32": GGMLQuantizationType.F32,
    "F16": GGMLQuantizationType.F16,
    "BF16": GGMLQuantizationType.BF16,
}
_SOURCE_TYPES = _SAME_ENCODING | {"F64": GGMLQuantizationType.F32}


@dataclass(frozen=True)
class Heads:
    """Attention head counts, needed to reorder q/k rows for the llama architecture."""

    n_head: int
    n_head_kv: int


def gguf_tensor_name(arch: str, hf_name: str, n_blocks: int) -> str:
    """The GGUF name of a Hugging Face tensor; ClmError for one llama.cpp has no place for."""
    name_map = gguf.get_tensor_name_map(LLAMA_CPP_ARCHS[arch], n_blocks)
    name = name_map.get_name(hf_name, try_suffixes=(".weight", ".bias"))
    if name is None:
        raise ClmError(f"tensor {hf_name} has no counterpart in llama.cpp's {arch} architecture")
    return name


def llama_permute(weights: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's LlamaModel.permute: interleave the two rotary halves of each head's rows."""
    rows = weights.shape[0]
    return (
        weights.reshape(n_head, 2, rows // n_head // 2, *weights.shape[1:])
        .swapaxes(1, 2)
        .reshape(weights.shape)
    )


def reorder_for_llama_cpp(arch: str, gguf_name: str, weights: np.ndarray, heads: Heads) -> np.ndarray:
    """q/k weights and biases in llama.cpp's row order for `arch` (a no-op except for llama)."""
    if arch != "llama":
        return weights
    if ".attn_q." in gguf_name:
        return llama_permute(weights, heads.n_head)
    if ".attn_k." in gguf_name:
        return llama_permute(weights, heads.n_head_kv)
    return weights


def norm_offset(arch: str, hf_name: str) -> float:
    """What llama.cpp's converter adds to a tensor: 1 to Gemma's norm gains (HF computes x * (1 + w))."""
    return 1.0 if arch in GEMMA_NORM_ARCHITECTURES and hf_name.endswith("norm.weight") else 0.0


def check_outtype(outtype: str) -> None:
    if outtype not in OUTTYPES:
        raise ClmError(f"--outtype must be one of {', '.join(OUTTYPES)} (got {outtype!r})")


def stored_type(outtype: str, gguf_name: str, ne: tuple[int, ...], source_dtype: str) -> GGMLQuantizationType:
    """The GGUF type a tensor is written in, following llama.cpp's converter.

    Norms and other 1-D tensors stay F32. A Q8_0 request falls back to F16 for a tensor whose rows
    are not a whole number of 32-value blocks (the converter does the same on QuantError).
    """
    check_outtype(outtype)
    if len(ne) <= 1 or gguf_name.endswith("_norm.weight"):
        return GGMLQuantizationType.F32
    if outtype == "auto":
        if source_dtype not in _SOURCE_TYPES:
            raise ClmError(f"tensor {gguf_name} has type {source_dtype}, expected a float type")
        return _SOURCE_TYPES[source_dtype]
    qtype = _FIXED_TYPES[outtype]
    block_size, _ = gguf.GGML_QUANT_SIZES[qtype]
    return qtype if ne[0] % block_size == 0 else GGMLQuantizationType.F16


def to_gguf_tensor(
    arch: str, hf_name: str, tensor: SafeTensor, *, n_blocks: int, heads: Heads, outtype: str
) -> OutputTensor:
    """One Hugging Face tensor as a GGUF tensor; its bytes are computed only when written."""
    name = gguf_tensor_name(arch, hf_name, n_blocks)
    ne = tuple(reversed(tensor.shape))
    qtype = stored_type(outtype, name, ne, tensor.dtype)
    offset = norm_offset(arch, hf_name)

    def encode() -> np.ndarray:
        if offset:
            return gguf.quants.quantize(tensor.to_float32() + np.float32(offset), qtype)
        if _SAME_ENCODING.get(tensor.dtype) == qtype:
            # The stored bits are already the GGUF encoding: no float32 copy of a multi-GB
            # embedding, and the row reordering works on raw storage as on floats.
            return np.ascontiguousarray(reorder_for_llama_cpp(arch, name, tensor.storage, heads))
        weights = reorder_for_llama_cpp(arch, name, tensor.to_float32(), heads)
        return gguf.quants.quantize(weights, qtype)

    return OutputTensor(name, ne, qtype, encode)
