"""Path (b): convert a Hugging Face folder in the expanded CLM layout to one GGUF.

The folder is an ordinary model of a supported family whose `num_hidden_layers` is N+1 and whose
`model.layers.0` is P (what `clm-local train --export-hf` writes and what the paper's authors
publish), so the conversion is llama.cpp's convert_hf_to_gguf.py for these families, done with
gguf-py: the same metadata keys, tensor names, q/k row order and tokenizer, plus the clm.* keys and
the per-block sliding-window flags from `layer_types` (P's first), which llama.cpp's converter leaves
for the loader to derive from the block index (wrong once P shifts the base blocks by one).
Tensors are read memory-mapped and converted one at a time while the file is written.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gguf
import numpy as np
from gguf import GGMLQuantizationType

from clm_local.errors import ClmError
from clm_local.gguf.keys import HF_MODEL_TYPES, SLIDING_WINDOW_PERIODS

from .clm_metadata import check_architecture, clm_entries
from .gguf_io import OutputTensor, entries_from_writer, write_gguf
from .hf_tensors import Heads, to_gguf_tensor
from .hf_tokenizer import add_tokenizer
from .layer_patterns import check_gemma_attention_scale
from .layout_check import check_pre_layers
from .safetensors_io import SafeTensor, read_safetensors

_FILE_TYPES = {
    GGMLQuantizationType.F32: gguf.LlamaFileType.ALL_F32,
    GGMLQuantizationType.F16: gguf.LlamaFileType.MOSTLY_F16,
    GGMLQuantizationType.BF16: gguf.LlamaFileType.MOSTLY_BF16,
    GGMLQuantizationType.Q8_0: gguf.LlamaFileType.MOSTLY_Q8_0,
}
# Tensors a checkpoint may carry that llama.cpp recomputes instead of loading.
_SKIPPED_SUFFIXES = (".rotary_emb.inv_freq",)


@dataclass(frozen=True)
class HfConfig:
    """The hyperparameters of config.json that the GGUF needs, checked to be present."""

    arch: str
    n_blocks: int
    n_ctx: int
    n_embd: int
    n_ff: int
    n_head: int
    n_head_kv: int
    head_dim: int | None  # only when config.json states it
    rms_eps: float
    n_vocab: int
    tied_embeddings: bool
    rope: dict[str, Any]  # rope_theta, rope_type and scaling parameters, whichever config style
    raw: dict[str, Any]  # config.json itself, for the family-specific keys (soft-capping, windows, ...)

    @property
    def rope_dim(self) -> int:
        head_dim = self.head_dim or self.n_embd // self.n_head
        return int(head_dim * self.rope.get("partial_rotary_factor", 1.0))

    @property
    def sliding_flags(self) -> list[bool] | None:
        """One flag per block from `layer_types` (P's first), for the families llama.cpp reads it for."""
        layer_types = self.raw.get("layer_types")
        if self.arch not in SLIDING_WINDOW_PERIODS or not layer_types:
            return None
        if len(layer_types) != self.n_blocks:
            raise ClmError(f"config.json has {len(layer_types)} layer_types for {self.n_blocks} blocks")
        return [kind == "sliding_attention" for kind in layer_types]


def is_hf_folder(path: Path) -> bool:
    return path.is_dir() and (path / "config.json").is_file()


def convert_hf_folder(
    folder: Path,
    out: Path,
    *,
    pre_layers: int,
    outtype: str,
    alpha_default: float,
    mix_default: str,
    force: bool,
    trust_layout: bool = False,
) -> None:
    """Write `out`: the whole folder (weights and tokenizer) as a CLM GGUF; its first `pre_layers`
    blocks must look like pre-layers (layout_check.py) unless `trust_layout`."""
    config = read_config(folder)
    if config.n_blocks <= pre_layers:
        raise ClmError(
            f"{folder} has {config.n_blocks} blocks: too few for {pre_layers} pre-layer(s) and a model"
        )
    tensors = _tensors(folder, config, outtype)
    if not trust_layout:
        check_pre_layers(tensors, pre_layers, folder)

    recorder = gguf.GGUFWriter(None, config.arch)  # no file: collects typed key/value pairs
    _add_general(recorder, folder, tensors)
    _add_hparams(recorder, config, tensors)
    recorder.add_quantization_version(gguf.GGML_QUANT_VERSION)
    add_tokenizer(recorder, folder, config.arch, config.n_vocab)
    metadata = entries_from_writer(recorder)
    metadata += clm_entries(pre_layers=pre_layers, alpha_default=alpha_default, mix_default=mix_default)
    write_gguf(out, config.arch, metadata, tensors, force=force)


def read_config(folder: Path) -> HfConfig:
    path = folder / "config.json"
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ClmError(f"cannot read {path} ({error})") from None
    model_type = str(raw.get("model_type"))
    arch = HF_MODEL_TYPES.get(model_type, model_type)
    check_architecture(arch, folder)

    def need(key: str) -> Any:
        if key not in raw:
            raise ClmError(f"{path} lacks '{key}'")
        return raw[key]

    rope = dict(raw.get("rope_parameters") or raw.get("rope_scaling") or {})
    if "full_attention" in rope:  # Gemma 3: one set per attention type; the full one is the main
        rope = dict(rope["full_attention"], swa_theta=rope.get("sliding_attention", {}).get("rope_theta"))
    rope.setdefault("rope_theta", raw.get("rope_theta"))
    rope.setdefault("rope_type", rope.get("type", "default"))
    try:
        return HfConfig(
            arch=arch,
            n_blocks=int(need("num_hidden_layers")),
            n_ctx=int(need("max_position_embeddings")),
            n_embd=int(need("hidden_size")),
            n_ff=int(need("intermediate_size")),
            n_head=int(need("num_attention_heads")),
            n_head_kv=int(raw.get("num_key_value_heads") or need("num_attention_heads")),
            head_dim=None if raw.get("head_dim") is None else int(raw["head_dim"]),
            rms_eps=float(need("rms_norm_eps")),
            n_vocab=int(need("vocab_size")),
            tied_embeddings=bool(raw.get("tie_word_embeddings", False)),
            rope=rope,
            raw=raw,
        )
    except (TypeError, ValueError) as error:
        raise ClmError(f"{path} holds a value of the wrong type ({error})") from None


def _tensors(folder: Path, config: HfConfig, outtype: str) -> list[OutputTensor]:
    """Every tensor of the folder in GGUF form, plus llama3's rope factors, checked for completeness."""
    heads = Heads(config.n_head, config.n_head_kv)
    tensors = [_rope_factors(config)] if config.rope["rope_type"] == "llama3" else []
    for hf_name, tensor in _read_weights(folder).items():
        if hf_name.endswith(_SKIPPED_SUFFIXES) or (config.tied_embeddings and hf_name == "lm_head.weight"):
            continue  # a tied head is token_embd again: llama.cpp reuses it when output.weight is absent
        tensors.append(
            to_gguf_tensor(
                config.arch, hf_name, tensor, n_blocks=config.n_blocks, heads=heads, outtype=outtype
            )
        )
    _check_complete(folder, config, {t.name for t in tensors})
    return tensors


def _read_weights(folder: Path) -> dict[str, SafeTensor]:
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        try:
            files = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
        except (UnicodeDecodeError, json.JSONDecodeError, KeyError, AttributeError) as error:
            raise ClmError(f"{index} is not a valid safetensors index ({error})") from None
        paths = [folder / name for name in files]
    else:
        paths = sorted(folder.glob("*.safetensors"))
    if not paths:
        raise ClmError(f"{folder} has no *.safetensors weights (PyTorch .bin checkpoints are not supported)")
    weights: dict[str, SafeTensor] = {}
    for path in paths:
        for name, tensor in read_safetensors(path).items():
            if name in weights:
                raise ClmError(f"{folder}: tensor {name} appears in two weight files")
            weights[name] = tensor
    return weights


def _check_complete(folder: Path, config: HfConfig, names: set[str]) -> None:
    """Refuse a folder whose tensors llama.cpp would reject or silently misread."""
    required = {"token_embd.weight", "output_norm.weight"}
    if not config.tied_embeddings:
        required.add("output.weight")  # absent, llama.cpp would silently tie the head to token_embd
    if missing := sorted(required - names):
        raise ClmError(f"{folder} lacks tensors for {', '.join(missing)}")
    per_block = [
        {n.split(".", 2)[2] for n in names if n.startswith(f"blk.{i}.")} for i in range(config.n_blocks)
    ]
    for index, block in enumerate(per_block):
        if block != per_block[0] or not block:
            raise ClmError(f"{folder}: block {index} does not have the same tensors as block 0")


def _rope_factors(config: HfConfig) -> OutputTensor:
    """llama3 rope scaling as llama.cpp stores it: per-frequency factors (generate_extra_tensors)."""
    rope = config.rope
    theta = float(rope["rope_theta"] or 10000.0)  # transformers' default when config.json is silent
    freqs = 1.0 / (theta ** (np.arange(0, config.rope_dim, 2, dtype=np.float32) / config.rope_dim))
    factor = rope.get("factor", 8.0)
    low_freq_factor = rope.get("low_freq_factor", 1.0)
    high_freq_factor = rope.get("high_freq_factor", 4.0)
    old_context_len = rope.get("original_max_position_embeddings", 8192)
    low_freq_wavelen = old_context_len / low_freq_factor
    high_freq_wavelen = old_context_len / high_freq_factor
    factors = []
    for freq in freqs:
        wavelen = 2 * math.pi / freq
        if wavelen < high_freq_wavelen:
            factors.append(1.0)
        elif wavelen > low_freq_wavelen:
            factors.append(factor)
        else:
            smooth = (old_context_len / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor)
            factors.append(1 / ((1 - smooth) / factor + smooth))
    data = np.array(factors, dtype=np.float32)
    return OutputTensor("rope_freqs.weight", (len(factors),), GGMLQuantizationType.F32, data)


def _add_general(writer: gguf.GGUFWriter, folder: Path, tensors: list[OutputTensor]) -> None:
    """general.* from the model card and config, as llama.cpp's converter derives them."""
    total_params = sum(t.n_elements for t in tensors)
    metadata = gguf.Metadata.load(None, folder, None, total_params)
    metadata.name = metadata.name or folder.name
    metadata.size_label = metadata.size_label or gguf.size_label(total_params, total_params, 0, 0)
    writer.add_type(gguf.GGUFType.MODEL)
    metadata.set_gguf_meta_model(writer)


def _add_hparams(writer: gguf.GGUFWriter, config: HfConfig, tensors: list[OutputTensor]) -> None:
    """The `{arch}.*` hyperparameters (llama.cpp's TextModel and LlamaModel.set_gguf_parameters)."""
    writer.add_block_count(config.n_blocks)
    writer.add_context_length(config.n_ctx)
    writer.add_embedding_length(config.n_embd)
    writer.add_feed_forward_length(config.n_ff)
    writer.add_head_count(config.n_head)
    writer.add_head_count_kv(config.n_head_kv)
    _add_rope(writer, config)
    writer.add_layer_norm_rms_eps(config.rms_eps)
    if config.head_dim is not None:
        writer.add_key_length(config.head_dim)
        writer.add_value_length(config.head_dim)
    writer.add_file_type(_file_type(tensors))
    if config.arch == "llama":
        writer.add_vocab_size(config.n_vocab)
        writer.add_rope_dimension_count(config.rope_dim)
    _add_family_hparams(writer, config)


def _add_family_hparams(writer: gguf.GGUFWriter, config: HfConfig) -> None:
    """What llama.cpp's Gemma2Model, Gemma3Model and Phi3MiniModel add for their families, and the
    per-block sliding-window flags (P's first) in place of the pattern llama.cpp would derive."""
    raw = config.raw
    if config.arch == "gemma2":
        check_gemma_attention_scale(raw, config.head_dim or config.n_embd // config.n_head)
        writer.add_attn_logit_softcapping(raw["attn_logit_softcapping"])
        writer.add_final_logit_softcapping(raw["final_logit_softcapping"])
        writer.add_sliding_window(raw["sliding_window"])
    elif config.arch == "gemma3":
        check_gemma_attention_scale(raw, config.head_dim or config.n_embd // config.n_head)
        if raw.get("final_logit_softcapping"):
            writer.add_final_logit_softcapping(raw["final_logit_softcapping"])
        if raw.get("sliding_window_pattern") != 1 and raw.get("sliding_window"):
            writer.add_sliding_window(raw["sliding_window"])
        if config.rope.get("swa_theta") is not None:
            writer.add_rope_freq_base_swa(config.rope["swa_theta"])
    elif config.arch == "phi3":
        writer.add_rope_dimension_count(config.rope_dim)
        original_n_ctx = config.rope.get("original_max_position_embeddings", config.n_ctx)
        writer.add_rope_scaling_orig_ctx_len(original_n_ctx)
        writer.add_sliding_window(raw.get("sliding_window") or 0)
    if config.sliding_flags is not None:
        writer.add_sliding_window_pattern(config.sliding_flags)


def _add_rope(writer: gguf.GGUFWriter, config: HfConfig) -> None:
    """Rope base and scaling; the scaling types the supported checkpoints use (yarn: its two
    essential parameters, which is all Qwen2.5's long-context configs set). Phi-3's longrope needs
    per-frequency factor tensors that this converter does not write: refused."""
    rope = config.rope
    rope_type = rope["rope_type"]
    try:
        if rope_type == "linear":
            writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
            writer.add_rope_scaling_factor(rope["factor"])
        elif rope_type == "yarn":
            writer.add_rope_scaling_type(gguf.RopeScalingType.YARN)
            writer.add_rope_scaling_factor(rope["factor"])
            writer.add_rope_scaling_orig_ctx_len(rope["original_max_position_embeddings"])
        elif rope_type not in ("default", "llama3"):  # llama3 is stored as the rope_freqs tensor
            raise ClmError(f"rope scaling '{rope_type}' is not supported")
    except KeyError as missing:
        raise ClmError(f"rope scaling '{rope_type}' in config.json lacks {missing}") from None
    if rope["rope_theta"] is not None:
        writer.add_rope_freq_base(rope["rope_theta"])


def _file_type(tensors: list[OutputTensor]) -> gguf.LlamaFileType:
    """general.file_type: the type that holds most of the matrix parameters."""
    weight = Counter()
    for tensor in tensors:
        if len(tensor.ne) >= 2:
            weight[tensor.ggml_type] += tensor.n_elements
    return _FILE_TYPES[weight.most_common(1)[0][0]]
