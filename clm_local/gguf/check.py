"""Check that a GGUF is a model llama.cpp can load and run, before llama.cpp sees it.

llama.cpp trusts a file's metadata in places: it aborts the whole process (GGML_ASSERT) on a block
count above LLAMA_MAX_LAYERS, a negative or NaN norm epsilon, a RoPE dimension unlike the head size
in graphs that require them equal (odd or above it in any graph), a norm or bias stored as F16, a
tokenizer model that does not match the vocabulary, and more; a zero RoPE base gives NaN logits.
`check_gguf(path)` reads the header (clm_local.gguf.header, cheap and bounded) and refuses such a
file with one ClmError naming the file and the first problem.

Generic rules apply to every architecture; the shapes and head rules of an architecture's graph
come from ARCH_RULES, one entry per architecture clm-local serves. Adding an architecture means
adding its entry (and its name to gguf_keys.SUPPORTED_ARCHITECTURES).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from clm_local.errors import ClmError
from clm_local.gguf.constants import GGML_QUANT_SIZES, GGUFValueType
from clm_local.gguf.header import FLOAT_TYPES, INTEGER_TYPES, GgufHeader, StringArray, read_header
from clm_local.gguf.keys import (
    CLM_VERSION,
    KEY_ALPHA_DEFAULT,
    KEY_MIX_DEFAULT,
    KEY_PRE_LAYER_COUNT,
    KEY_VERSION,
    MIX_MODES,
    SUPPORTED_ARCHITECTURES,
)

MAX_LAYERS = 512  # LLAMA_MAX_LAYERS (llama-hparams.h)
MAX_EXPERTS = 1024  # LLAMA_MAX_EXPERTS
ROPE_SCALING_TYPES = ("none", "linear", "yarn", "longrope")  # anything else aborts llama.cpp
# tokenizer.ggml.model values clm-local runs: "gpt2" is byte-level BPE, "llama" SentencePiece,
# "none"/"no_vocab" a vocabulary of token ids without text (the tests' tiny models).
TOKENIZER_MODELS = ("gpt2", "llama", "none", "no_vocab")
NO_TEXT_TOKENIZERS = ("none", "no_vocab")
# ggml types that hold integers or doubles: llama.cpp's matrix and norm kernels take none of them.
INTEGER_TENSOR_TYPES = ("I8", "I16", "I32", "I64", "F64")
# The graphs multiply F32 activations by every norm weight (build_norm: ggml_mul) and add every
# bias (ggml_add); ggml-cpu's binary ops (binary-ops.cpp, binary_op) abort unless such an operand
# is F32 too, and ggml_rope_ext asserts F32 frequency factors. 1-D tensors are all of these kinds.
VECTOR_TYPES = ("F32",)
ELEMENTWISE_SUFFIXES = (
    "norm.weight",
    ".bias",
    "rope_factors_long.weight",
    "rope_factors_short.weight",
    "rope_freqs.weight",
)

_BLOCK_TENSOR = re.compile(r"blk\.(\d+)\.(.+)")


@dataclass(frozen=True)
class Hparams:
    """The hyperparameters tensor shapes depend on; per-layer lists where a file may vary them."""

    n_embd: int
    n_layer: int
    n_vocab: int | None
    n_head: list[int]
    n_head_kv: list[int]
    n_ff: list[int]
    head_k: int
    head_v: int
    n_rot: int


ShapeRule = Callable[[Hparams, int], tuple[int, ...]]  # (hparams, layer) -> expected ggml ne

# Expected ggml shapes (innermost first), as llama.cpp's create_tensor calls them, of tensors that
# most transformer graphs share. A tensor not listed here is not shape-checked.
GLOBAL_SHAPES: dict[str, Callable[[Hparams], tuple[int, ...]]] = {
    "token_embd.weight": lambda h: (h.n_embd, h.n_vocab),
    "output.weight": lambda h: (h.n_embd, h.n_vocab),
    "output_norm.weight": lambda h: (h.n_embd,),
}
BLOCK_SHAPES: dict[str, ShapeRule] = {
    "attn_norm.weight": lambda h, i: (h.n_embd,),
    "attn_q.weight": lambda h, i: (h.n_embd, h.n_head[i] * h.head_k),
    "attn_k.weight": lambda h, i: (h.n_embd, h.n_head_kv[i] * h.head_k),
    "attn_v.weight": lambda h, i: (h.n_embd, h.n_head_kv[i] * h.head_v),
    "attn_q.bias": lambda h, i: (h.n_head[i] * h.head_k,),
    "attn_k.bias": lambda h, i: (h.n_head_kv[i] * h.head_k,),
    "attn_v.bias": lambda h, i: (h.n_head_kv[i] * h.head_v,),
    "attn_q_norm.weight": lambda h, i: (h.head_k,),
    "attn_k_norm.weight": lambda h, i: (h.head_k,),
    "attn_qkv.weight": lambda h, i: (
        h.n_embd,
        h.n_head[i] * h.head_k + h.n_head_kv[i] * (h.head_k + h.head_v),
    ),
    "attn_output.weight": lambda h, i: (h.n_head[i] * h.head_v, h.n_embd),
    "post_attention_norm.weight": lambda h, i: (h.n_embd,),
    "ffn_norm.weight": lambda h, i: (h.n_embd,),
    "ffn_gate.weight": lambda h, i: (h.n_embd, h.n_ff[i]),
    "ffn_up.weight": lambda h, i: (h.n_embd, h.n_ff[i]),
    "ffn_down.weight": lambda h, i: (h.n_ff[i], h.n_embd),
    "post_ffw_norm.weight": lambda h, i: (h.n_embd,),
}


@dataclass(frozen=True)
class ArchRules:
    """What one architecture's llama.cpp graph needs (src/models/<arch>.cpp)."""

    block_tensors: tuple[str, ...]  # required in every block 0..N-1
    global_tensors: tuple[str, ...] = ("token_embd.weight", "output_norm.weight")
    norm_eps_key: str = "attention.layer_norm_rms_epsilon"  # after "{arch}."
    # The graph asserts n_embd_head_v == n_embd_head_k == n_rot (llama.cpp aborts otherwise).
    rope_dim_is_head_size: bool = True
    # The graph asserts n_embd_head_v == n_embd_head_k (implied by rope_dim_is_head_size).
    same_head_sizes: bool = False
    # Block tensors shaped unlike BLOCK_SHAPES in this graph (Phi-3's fused gate and up: 2 n_ff).
    block_shapes: dict[str, ShapeRule] = field(default_factory=dict)
    # Keys (after "{arch}.") the graph divides by whatever their value (Gemma 2's soft-caps).
    divisors: tuple[str, ...] = ()


_LLAMA_BLOCK = (
    "attn_norm.weight",
    "attn_q.weight",
    "attn_k.weight",
    "attn_v.weight",
    "attn_output.weight",
    "ffn_norm.weight",
)
_GATED_FFN = ("ffn_gate.weight", "ffn_up.weight", "ffn_down.weight")
_GEMMA_BLOCK = (*_LLAMA_BLOCK, *_GATED_FFN, "post_attention_norm.weight", "post_ffw_norm.weight")
ARCH_RULES: dict[str, ArchRules] = {
    "llama": ArchRules(block_tensors=_LLAMA_BLOCK),  # ffn tensors differ with experts (Mixtral)
    "qwen2": ArchRules(
        block_tensors=(*_LLAMA_BLOCK, "attn_q.bias", "attn_k.bias", "attn_v.bias", *_GATED_FFN)
    ),
    "qwen3": ArchRules(
        block_tensors=(*_LLAMA_BLOCK, "attn_q_norm.weight", "attn_k_norm.weight", *_GATED_FFN)
    ),
    # Gemma's head size is its own key (256 on Gemma 2 9B, not n_embd / n_head); no rope assert.
    # Gemma 2 always soft-caps (models/gemma2.cpp: ggml_scale by 1 / final_logit_softcapping;
    # attn_soft_cap = true: llama-graph.cpp scales the attention scores by 1 / the attention one).
    "gemma2": ArchRules(
        block_tensors=_GEMMA_BLOCK,
        rope_dim_is_head_size=False,
        divisors=("attn_logit_softcapping", "final_logit_softcapping"),
    ),
    "gemma3": ArchRules(
        block_tensors=(*_GEMMA_BLOCK, "attn_q_norm.weight", "attn_k_norm.weight"),
        rope_dim_is_head_size=False,
    ),
    # Phi-3: q, k, v fused or apart (either loads); Phi-4-mini rotates only part of each head.
    "phi3": ArchRules(
        block_tensors=(
            "attn_norm.weight",
            "attn_output.weight",
            "ffn_norm.weight",
            "ffn_up.weight",
            "ffn_down.weight",
        ),
        rope_dim_is_head_size=False,
        same_head_sizes=True,  # models/phi3.cpp: GGML_ASSERT(n_embd_head == n_embd_head_k)
        block_shapes={"ffn_up.weight": lambda h, i: (h.n_embd, 2 * h.n_ff[i])},
    ),
}


class _Problem(Exception):
    """The first thing wrong with a file; check_gguf adds the file name."""


def check_gguf(path: str | Path) -> GgufHeader:
    """The file's header after every check passed; ClmError naming the file and the first problem."""
    header = read_header(path)
    try:
        check_header(header)
    except _Problem as problem:
        raise ClmError(f"{header.path}: {problem}") from None
    return header


def check_header(header: GgufHeader) -> None:
    """Raise _Problem for the first rule the header breaks."""
    values = _Values(header)
    arch = values.text("general.architecture", required=True)
    n_layer = values.integer(f"{arch}.block_count", required=True)
    if not 1 <= n_layer <= MAX_LAYERS:
        raise _Problem(f"{arch}.block_count is {n_layer}; llama.cpp loads 1 to {MAX_LAYERS} blocks")
    _check_clm_keys(values, arch, n_layer)
    values.text("general.name")  # shown by info and load: the right type or nothing
    values.integer(f"{arch}.context_length")
    _check_llama_asserts(values, arch, n_layer)
    n_vocab = _check_tokenizer(values, header, arch)
    _check_tensor_types_and_blocks(header, n_layer)
    rules = ARCH_RULES.get(arch)
    if rules is not None:
        hparams = _hparams(values, arch, n_layer, n_vocab, rules)
        _check_tensors(header, hparams, rules)


class _Values:
    """Typed access to metadata: a value of the wrong type is a _Problem, never a TypeError."""

    def __init__(self, header: GgufHeader) -> None:
        self.header = header

    def _kind(self, key: str) -> GGUFValueType | None:
        kind = self.header.types.get(key)
        return None if kind is None else kind[0]

    def present(self, key: str) -> bool:
        return key in self.header.values

    def text(self, key: str, *, required: bool = False) -> str | None:
        if not self._expect(key, {GGUFValueType.STRING}, "a string", required):
            return None
        return str(self.header.values[key])

    def integer(self, key: str, *, required: bool = False) -> int | None:
        if not self._expect(key, INTEGER_TYPES, "an integer", required):
            return None
        return int(self.header.values[key])

    def number(self, key: str, *, required: bool = False) -> float | None:
        if not self._expect(key, FLOAT_TYPES, "a floating-point number", required):
            return None
        return float(self.header.values[key])

    def per_layer(self, key: str, n_layer: int, *, required: bool = False) -> list[int] | None:
        """An integer, or an integer array with one entry per block (llama.cpp accepts both)."""
        kind = self.header.types.get(key)
        if kind is not None and kind[0] == GGUFValueType.ARRAY:
            if kind[1] not in INTEGER_TYPES:
                raise _Problem(f"{key} must be an integer or an array of integers")
            array = self.header.values[key]
            if len(array) != n_layer:
                raise _Problem(f"{key} has {len(array)} entries for {n_layer} blocks")
            return [int(v) for v in array]
        value = self.integer(key, required=required)
        return None if value is None else [value] * n_layer

    def _expect(self, key: str, kinds: frozenset | set, what: str, required: bool) -> bool:
        kind = self._kind(key)
        if kind is None:
            if required:
                raise _Problem(f"no {key} in the metadata")
            return False
        if kind not in kinds:
            raise _Problem(f"{key} must be {what}, not {kind.name}")
        return True


def _check_llama_asserts(values: _Values, arch: str, n_layer: int) -> None:
    """Hyperparameters that llama.cpp's load_hparams asserts on, for any architecture."""
    nextn = values.integer(f"{arch}.nextn_predict_layers") or 0
    if not 0 <= nextn <= n_layer:
        raise _Problem(f"{arch}.nextn_predict_layers is {nextn}, more than the {n_layer} blocks")
    n_expert = values.integer(f"{arch}.expert_count") or 0
    used = max(values.per_layer(f"{arch}.expert_used_count", n_layer) or [0])
    groups = values.integer(f"{arch}.expert_group_count") or 0
    if not 0 <= n_expert <= MAX_EXPERTS:
        raise _Problem(f"{arch}.expert_count is {n_expert}; llama.cpp allows 0 to {MAX_EXPERTS}")
    if n_expert and not (0 < used <= n_expert and 0 <= groups < n_expert):
        raise _Problem(f"{arch}.expert_used_count ({used}) must be 1 to {arch}.expert_count ({n_expert})")
    if not n_expert and (used or groups):
        raise _Problem(f"{arch}.expert_used_count is {used} but the model has no experts")
    for suffix in ("attention.layer_norm_rms_epsilon", "attention.layer_norm_epsilon"):
        eps = values.number(f"{arch}.{suffix}")
        if eps is not None and not (math.isfinite(eps) and eps > 0):
            raise _Problem(f"{arch}.{suffix} is {eps}; a norm epsilon must be finite and positive")
    scaling = values.text(f"{arch}.rope.scaling.type")
    if scaling is not None and scaling not in ROPE_SCALING_TYPES:
        raise _Problem(f"{arch}.rope.scaling.type is {scaling!r}, not one of {', '.join(ROPE_SCALING_TYPES)}")
    for suffix in ("rope.scaling.factor", "rope.scaling.attn_factor"):
        value = values.number(f"{arch}.{suffix}")
        if value is not None and not (math.isfinite(value) and value >= 0):
            raise _Problem(f"{arch}.{suffix} is {value}; it must be finite and not negative")
    # ggml's rope raises the base to -2/n_dims: a base of 0 gives inf, and the angles NaN
    for suffix in ("rope.freq_base", "rope.freq_base_swa"):
        value = values.number(f"{arch}.{suffix}")
        if value is not None and not (math.isfinite(value) and value > 0):
            raise _Problem(f"{arch}.{suffix} is {value}; it must be finite and positive")
    # the graphs scale by 1 / softcap, tanh, then by softcap: inf * tanh(0) is NaN
    for suffix in ("attn_logit_softcapping", "final_logit_softcapping"):
        value = values.number(f"{arch}.{suffix}")
        if value is not None and not math.isfinite(value):
            raise _Problem(f"{arch}.{suffix} is {value}; a soft-cap must be a finite number")


def _check_clm_keys(values: _Values, arch: str, n_layer: int) -> None:
    """The clm.* contract (gguf_keys): types and ranges the runtime relies on."""
    if values.present(KEY_PRE_LAYER_COUNT) and arch not in SUPPORTED_ARCHITECTURES:
        raise _Problem(
            f"the CLM hook does not serve the {arch!r} architecture "
            f"(supported: {', '.join(SUPPORTED_ARCHITECTURES)})"
        )
    version = values.integer(KEY_VERSION)
    if version is not None and not 1 <= version <= CLM_VERSION:
        raise _Problem(
            f"CLM format version {version}: this clm-local reads version {CLM_VERSION}"
            + (" (update clm-local)" if version > CLM_VERSION else "")
        )
    if values.present(KEY_PRE_LAYER_COUNT):
        kind = values.header.types[KEY_PRE_LAYER_COUNT][0]
        if kind != GGUFValueType.UINT32:  # llama.cpp reads it as exactly a uint32
            raise _Problem(f"{KEY_PRE_LAYER_COUNT} must be a uint32, not {kind.name}")
        count = values.integer(KEY_PRE_LAYER_COUNT)
        if count >= n_layer:
            raise _Problem(f"{KEY_PRE_LAYER_COUNT} is {count}, but the model has only {n_layer} blocks")
    if values.present(KEY_ALPHA_DEFAULT):
        kind = values.header.types[KEY_ALPHA_DEFAULT][0]
        if kind != GGUFValueType.FLOAT32:
            raise _Problem(f"{KEY_ALPHA_DEFAULT} must be a float32, not {kind.name}")
        alpha = values.number(KEY_ALPHA_DEFAULT)
        if not math.isfinite(alpha):
            raise _Problem(f"{KEY_ALPHA_DEFAULT} is {alpha}; it must be a finite number")
    mix = values.text(KEY_MIX_DEFAULT)
    if mix is not None and mix not in MIX_MODES:
        raise _Problem(f"{KEY_MIX_DEFAULT} is {mix!r}, expected one of {', '.join(MIX_MODES)}")


def _check_tokenizer(values: _Values, header: GgufHeader, arch: str) -> int | None:
    """The vocabulary size, after checking the tokenizer model matches the vocabulary it names."""
    model = values.text("tokenizer.ggml.model", required=True)
    if model not in TOKENIZER_MODELS:
        raise _Problem(
            f"tokenizer.ggml.model is {model!r}, not one clm-local runs ({', '.join(TOKENIZER_MODELS)})"
        )
    tokens = _string_array(header, "tokenizer.ggml.tokens")
    merges = _string_array(header, "tokenizer.ggml.merges")
    if model in NO_TEXT_TOKENIZERS:
        if tokens is not None:
            raise _Problem(
                f"tokenizer.ggml.model is {model!r} (no vocabulary) "
                f"but the file has one of {tokens.count} tokens"
            )
        n_vocab = values.integer(f"{arch}.vocab_size", required=True)  # llama.cpp's only vocabulary size
        if n_vocab < 1:
            raise _Problem(f"{arch}.vocab_size is {n_vocab}")
        return n_vocab
    if tokens is None or tokens.count == 0:
        raise _Problem(f"tokenizer.ggml.model is {model!r} but the file has no tokenizer.ggml.tokens")
    for key, item_type in (
        ("tokenizer.ggml.scores", GGUFValueType.FLOAT32),
        ("tokenizer.ggml.token_type", GGUFValueType.INT32),
    ):
        kind = header.types.get(key)
        if kind is None:
            continue
        if kind != (GGUFValueType.ARRAY, item_type):
            raise _Problem(f"{key} must be an array of {item_type.name}")
        if len(header.values[key]) != tokens.count:
            raise _Problem(f"{key} has {len(header.values[key])} entries for {tokens.count} tokens")
    _check_unique_tokens(header)
    if model == "gpt2" and merges is None:
        raise _Problem("tokenizer.ggml.model is 'gpt2' (BPE) but the file has no tokenizer.ggml.merges")
    if model == "llama":
        if merges is not None:
            raise _Problem(
                "tokenizer.ggml.model is 'llama' (SentencePiece) but the vocabulary has BPE merges: "
                "it looks like a 'gpt2' vocabulary"
            )
        _check_byte_tokens(header)
    n_vocab = values.integer(f"{arch}.vocab_size")
    if n_vocab is not None and n_vocab != tokens.count:
        raise _Problem(f"{arch}.vocab_size is {n_vocab} but the vocabulary has {tokens.count} tokens")
    return tokens.count


def _string_array(header: GgufHeader, key: str) -> StringArray | None:
    if key not in header.values:
        return None
    value = header.values[key]
    if not isinstance(value, StringArray):
        raise _Problem(f"{key} must be an array of strings")
    return value


def _check_unique_tokens(header: GgufHeader) -> None:
    """Every token spelled once: llama.cpp maps text to ids and aborts when two ids share a text."""
    tokens = header.values["tokenizer.ggml.tokens"]
    if tokens.distinct == tokens.count:
        return
    seen: set[bytes] = set()
    for index, token in enumerate(header.strings("tokenizer.ggml.tokens")):
        if token in seen:
            raise _Problem(
                f"tokenizer.ggml.tokens[{index}] ({token.decode()!r}) appears twice in the vocabulary"
            )
        seen.add(token)


def _check_byte_tokens(header: GgufHeader) -> None:
    """A SentencePiece vocabulary must spell every byte (<0x00>..<0xFF>): llama.cpp aborts on text
    it cannot otherwise tokenize when one is missing."""
    wanted = {f"<0x{byte:02X}>".encode() for byte in range(256)}
    for token in header.strings("tokenizer.ggml.tokens"):
        wanted.discard(token)
        if not wanted:
            return
    raise _Problem(
        f"tokenizer.ggml.model is 'llama' (SentencePiece) but {len(wanted)} of the 256 byte tokens "
        f"(<0x00>..<0xFF>) are missing, e.g. {sorted(wanted)[0].decode()}"
    )


def _check_tensor_types_and_blocks(header: GgufHeader, n_layer: int) -> None:
    """Types llama.cpp can compute with, and no tensor beyond the last block."""
    for tensor in header.tensors:
        kind = tensor.ggml_type.name
        if kind in INTEGER_TENSOR_TYPES:
            raise _Problem(f"tensor {tensor.name} is stored as {kind}, which no model weight can be")
        if (len(tensor.ne) == 1 or tensor.name.endswith(ELEMENTWISE_SUFFIXES)) and kind not in VECTOR_TYPES:
            raise _Problem(
                f"tensor {tensor.name} (a norm, bias or RoPE factor vector) is stored as {kind}; "
                "llama.cpp adds and multiplies activations by F32 vectors only"
            )
        match = _BLOCK_TENSOR.fullmatch(tensor.name)
        if match and int(match[1]) >= n_layer:
            raise _Problem(f"tensor {tensor.name} belongs to no block: block_count is {n_layer}")


def _hparams(values: _Values, arch: str, n_layer: int, n_vocab: int | None, rules: ArchRules) -> Hparams:
    n_embd = values.integer(f"{arch}.embedding_length", required=True)
    n_head = values.per_layer(f"{arch}.attention.head_count", n_layer, required=True)
    n_head_kv = values.per_layer(f"{arch}.attention.head_count_kv", n_layer) or n_head
    n_ff = values.per_layer(f"{arch}.feed_forward_length", n_layer) or [0] * n_layer
    values.integer(f"{arch}.context_length", required=True)
    eps = values.number(f"{arch}.{rules.norm_eps_key}")
    if eps is None:
        raise _Problem(f"no {arch}.{rules.norm_eps_key} in the metadata")
    if n_embd < 1:
        raise _Problem(f"{arch}.embedding_length is {n_embd}")
    for layer, (heads, kv_heads) in enumerate(zip(n_head, n_head_kv, strict=True)):
        if heads < 1 or kv_heads < 1 or heads % kv_heads:
            raise _Problem(
                f"block {layer} has {heads} attention heads and {kv_heads} key/value heads; "
                "both must be positive and the first a multiple of the second"
            )
    if any(n < 0 for n in n_ff):
        raise _Problem(f"{arch}.feed_forward_length is negative")
    head_k = values.integer(f"{arch}.attention.key_length")
    head_v = values.integer(f"{arch}.attention.value_length")
    if head_k is None or head_v is None:
        if n_embd % n_head[0]:
            raise _Problem(f"{arch}.embedding_length {n_embd} is not a multiple of the {n_head[0]} heads")
    head_k = n_embd // n_head[0] if head_k is None else head_k
    head_v = n_embd // n_head[0] if head_v is None else head_v
    n_rot = values.integer(f"{arch}.rope.dimension_count")
    n_rot = head_k if n_rot is None else n_rot
    if head_k < 1 or head_v < 1:
        raise _Problem(f"the attention head size is {min(head_k, head_v)}")
    if rules.rope_dim_is_head_size and not n_rot == head_k == head_v:
        raise _Problem(
            f"{arch}.rope.dimension_count is {n_rot} but the head size is {head_k}: "
            f"llama.cpp's {arch} graph needs them equal"
        )
    if rules.same_head_sizes and head_k != head_v:
        raise _Problem(
            f"{arch}.attention.key_length ({head_k}) and value_length ({head_v}) differ: "
            f"llama.cpp's {arch} graph needs them equal"
        )
    # The graphs build every block with the head size of block 0 (n_embd_head_k()), while the KV
    # cache sizes a sliding-window block by the *_swa one: a second size cannot run.
    for suffix, size in (("key_length", head_k), ("value_length", head_v)):
        swa_size = values.integer(f"{arch}.attention.{suffix}_swa")
        if swa_size is not None and swa_size != size:
            raise _Problem(
                f"{arch}.attention.{suffix}_swa is {swa_size} but the head size is {size}: "
                f"llama.cpp's {arch} graph uses one head size for every block"
            )
    _check_rope_dims(values, arch, n_rot, head_k)
    for suffix in rules.divisors:
        value = values.number(f"{arch}.{suffix}")
        if value == 0:
            raise _Problem(f"{arch}.{suffix} is 0; the {arch} graph divides by it")
    if n_vocab is None:
        embedding = next((t for t in values.header.tensors if t.name == "token_embd.weight"), None)
        n_vocab = embedding.ne[-1] if embedding is not None else None
    return Hparams(n_embd, n_layer, n_vocab, n_head, n_head_kv, n_ff, head_k, head_v, n_rot)


def _check_rope_dims(values: _Values, arch: str, n_rot: int, head_k: int) -> None:
    """ggml's rope (ggml-cpu/ops.cpp) asserts n_dims <= ne0 (the head size) and n_dims even, and
    loops forever on n_dims 0 (it skips the n_dims - 2 rotated channels); with sliding-window
    blocks, the graph may rotate rope.dimension_count_swa values of every head instead."""
    n_rot_swa = values.integer(f"{arch}.rope.dimension_count_swa")
    n_rot_swa = n_rot if n_rot_swa is None else n_rot_swa
    for key, dims, head in (
        (f"{arch}.rope.dimension_count", n_rot, head_k),
        (f"{arch}.rope.dimension_count_swa", n_rot_swa, head_k),
    ):
        if dims % 2 or not 2 <= dims <= head:
            stated = "" if values.present(key) else " (its default: the file does not set it)"
            raise _Problem(
                f"{key} is {dims}{stated}; llama.cpp rotates an even number of a head's "
                f"{head} values, so it must be even and 2 to {head}"
            )


def _check_tensors(header: GgufHeader, hparams: Hparams, rules: ArchRules) -> None:
    """Required tensors present in every block, and every known tensor shaped as the metadata says."""
    by_name = {tensor.name: tensor for tensor in header.tensors}
    for name in rules.global_tensors:
        if name not in by_name:
            raise _Problem(f"tensor {name} is missing")
    for layer in range(hparams.n_layer):
        for part in rules.block_tensors:
            if f"blk.{layer}.{part}" not in by_name:
                raise _Problem(f"tensor blk.{layer}.{part} is missing")
    for name, tensor in by_name.items():
        match = _BLOCK_TENSOR.fullmatch(name)
        if match:
            rule = rules.block_shapes.get(match[2]) or BLOCK_SHAPES.get(match[2])
            expected = rule(hparams, int(match[1])) if rule else None
        else:
            rule = GLOBAL_SHAPES.get(name)
            expected = rule(hparams) if rule and hparams.n_vocab is not None else None
        if expected is not None and tuple(tensor.ne) != expected:
            raise _Problem(
                f"tensor {name} has shape {list(tensor.ne)}, the metadata implies {list(expected)}"
            )


def tensors_with_non_finite_values(header: GgufHeader, *, chunk_bytes: int = 1 << 24) -> list[str]:
    """Names of tensors holding NaN or Inf, decoded with gguf-py (quantized types included) a few
    rows at a time, so memory stays small. Reads every weight: seconds for a small model."""
    from gguf.quants import dequantize  # the whole gguf package: only this full check needs it

    bad = []
    data = np.memmap(header.path, dtype=np.uint8, mode="r")
    for tensor in header.tensors:
        block_size, type_size = GGML_QUANT_SIZES[tensor.ggml_type]
        row_bytes = tensor.ne[0] // block_size * type_size
        rows = tensor.n_bytes // row_bytes
        step = max(1, chunk_bytes // row_bytes)
        for first in range(0, rows, step):
            start = tensor.offset + first * row_bytes
            raw = data[start : start + min(step, rows - first) * row_bytes].reshape(-1, row_bytes)
            try:
                values = dequantize(raw, tensor.ggml_type)
            except NotImplementedError:
                break  # a type gguf-py cannot decode: not checked
            if not np.isfinite(values).all():
                bad.append(tensor.name)
                break
    return bad
