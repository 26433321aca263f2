"""`clm-local convert SOURCE OUT.gguf`: pick the path for the source, run it, optionally quantize.

SOURCE is one of (checked in this order):
  (a) a training checkpoint folder (pre_layer.safetensors + clm_manifest.json)  -> graft.py
  (b) a Hugging Face folder in the expanded layout (config.json, N+1 blocks)     -> hf_to_gguf.py
  (c) a GGUF made by llama.cpp's converter from such a folder                    -> add_keys.py
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from clm_local.errors import ClmError
from clm_local.gguf.check import check_gguf

from . import checkpoint_manifest
from .add_keys import add_clm_keys
from .clm_metadata import check_defaults
from .graft import graft, is_training_checkpoint
from .hf_tensors import check_outtype
from .hf_to_gguf import convert_hf_folder, is_hf_folder

FLOAT_TYPES = ("F32", "F16", "BF16")


class SourceKind(str, Enum):
    CHECKPOINT = "training checkpoint"
    HF_FOLDER = "Hugging Face folder"
    GGUF = "GGUF file"


@dataclass(frozen=True)
class ConvertOptions:
    outtype: str = "auto"
    alpha_default: float = 1.0
    mix_default: str = "logits"
    pre_layers: int = 1  # (b) and (c): how many leading blocks are pre-layers
    base: Path | None = None  # (a) only: the GGUF to graft onto
    force_base: bool = False  # (a) only: accept a base other than the one P was trained on
    name: str | None = None  # (a) only: general.name; None: graft.checkpoint_model_name
    quantize: str | None = None  # a llama.cpp type name (Q4_K_M, ...), applied to the output
    force: bool = False  # replace an existing output
    trust_layout: bool = False  # (b) and (c): skip the check that the first blocks look like pre-layers


def source_kind(source: Path) -> SourceKind:
    if is_training_checkpoint(source):
        return SourceKind.CHECKPOINT
    if is_hf_folder(source):
        return SourceKind.HF_FOLDER
    if source.is_file():
        with open(source, "rb") as stream:
            if stream.read(4) == b"GGUF":
                return SourceKind.GGUF
        raise ClmError(f"{source} is not a GGUF file")
    if source.is_dir():
        raise ClmError(
            f"{source} is neither a training checkpoint (pre_layer.safetensors) "
            "nor a Hugging Face model folder (config.json)"
        )
    raise ClmError(f"{source}: no such file or folder")


def convert(source: Path, out: Path, options: ConvertOptions) -> SourceKind:
    """Write the CLM GGUF `out` from `source`; returns which kind of source it was."""
    kind = source_kind(source)
    _check_options(kind, options)
    input_file = source if kind is SourceKind.GGUF else options.base
    if kind is SourceKind.CHECKPOINT and input_file is None:
        input_file = checkpoint_manifest.read(source).base_gguf()
    if input_file is not None and input_file.resolve() == out.resolve():
        raise ClmError(f"{out} is an input of the conversion; write the CLM file somewhere else")
    if options.quantize is not None and input_file is not None:
        _check_not_quantized(input_file, options.quantize)
    if options.quantize is not None:
        from .quantize import convert_then_quantize

        convert_then_quantize(
            lambda temp_out: _run(kind, source, temp_out, options, force=True),
            out,
            options.quantize,
            force=options.force,
        )
    else:
        _run(kind, source, out, options, force=options.force)
    return kind


def _check_options(kind: SourceKind, options: ConvertOptions) -> None:
    """Refuse bad or meaningless options before any slow work (hashing, reading weights)."""
    check_outtype(options.outtype)
    check_defaults(options.alpha_default, options.mix_default)
    if kind is not SourceKind.CHECKPOINT and (options.base is not None or options.force_base):
        raise ClmError("--base and --force-base apply to training checkpoints only")
    if kind is not SourceKind.CHECKPOINT and options.name is not None:
        raise ClmError("--name applies to training checkpoints only (other sources keep their name)")
    if options.name is not None and not options.name.strip():
        raise ClmError("--name is empty")
    if kind is SourceKind.CHECKPOINT and options.trust_layout:
        raise ClmError("--trust-layout applies to model folders and GGUF sources (a checkpoint's P is known)")
    if kind is SourceKind.CHECKPOINT and options.pre_layers != 1:
        raise ClmError("--pre-layers does not apply to a training checkpoint (it holds one pre-layer)")
    if kind is SourceKind.GGUF and options.outtype != "auto":
        raise ClmError("--outtype does not apply to a GGUF source (its tensors are copied as they are)")


def _check_not_quantized(gguf_file: Path, qtype: str) -> None:
    """--quantize needs float weights: llama.cpp refuses to quantize already-quantized tensors
    (the errors would compound), and it would only say so after the whole conversion."""
    quantized = sorted({t.ggml_type.name for t in check_gguf(gguf_file).tensors} - set(FLOAT_TYPES))
    if quantized:
        raise ClmError(
            f"--quantize {qtype}: {gguf_file} is already quantized ({', '.join(quantized)}); "
            "quantize from an F16, BF16 or F32 base, or leave --quantize off (the base's types are kept)"
        )


def _run(kind: SourceKind, source: Path, out: Path, options: ConvertOptions, *, force: bool) -> None:
    defaults = dict(alpha_default=options.alpha_default, mix_default=options.mix_default, force=force)
    if kind is SourceKind.CHECKPOINT:
        graft(
            source,
            out,
            base=options.base,
            force_base=options.force_base,
            outtype=options.outtype,
            name=options.name,
            **defaults,
        )
    elif kind is SourceKind.HF_FOLDER:
        convert_hf_folder(
            source,
            out,
            pre_layers=options.pre_layers,
            outtype=options.outtype,
            trust_layout=options.trust_layout,
            **defaults,
        )
    else:
        add_clm_keys(
            source, out, pre_layers=options.pre_layers, trust_layout=options.trust_layout, **defaults
        )
