"""Path (a): graft a trained pre-layer P into the user's own base GGUF.

The laptop path: the base stays exactly as the user has it (a Q4 file stays Q4, byte for byte)
and only P, a few MB, is converted. The output is the base with every block moved up by one
(`blk.i` -> `blk.i+1`), P as `blk.0`, `{arch}.block_count` = N+1, the per-block hyperparameters
stated with P's entry first (layer_patterns.py), every other key kept (tokenizer, chat template,
rope) and the clm.* keys added: the layout of CLM.md, "The GGUF file".

P arrives under the base's Hugging Face names for block 0 (`model.layers.0.self_attn.q_proj.weight`,
...) and goes through hf_tensors like any converted tensor, q/k row order included.
"""

from __future__ import annotations

import re
from pathlib import Path

import gguf

from clm_local.errors import ClmError
from clm_local.files import sha256_file
from clm_local.gguf.file import field_value, open_gguf

from . import checkpoint_manifest
from .checkpoint_manifest import MANIFEST_FILE, PRE_LAYER_FILE
from .clm_metadata import check_gguf_source, clm_entries
from .gguf_io import (
    MetadataEntry,
    OutputTensor,
    copy_metadata,
    copy_tensor,
    require_value,
    write_gguf,
)
from .hf_tensors import Heads, to_gguf_tensor
from .layer_patterns import check_gemma_block_count, per_block_entries
from .safetensors_io import read_safetensors

_P_PREFIX = "model.layers.0."
_BLOCK_NAME = re.compile(r"blk\.(\d+)\.(.+)")


def is_training_checkpoint(path: Path) -> bool:
    return path.is_dir() and any((path / name).is_file() for name in (MANIFEST_FILE, PRE_LAYER_FILE))


def graft(
    checkpoint: Path,
    out: Path,
    *,
    base: Path | None,
    force_base: bool,
    outtype: str,
    alpha_default: float,
    mix_default: str,
    force: bool,
    name: str | None = None,
) -> None:
    """Write `out`: the base GGUF with the checkpoint's P inserted as block 0, named `name`
    (general.name; default: checkpoint_model_name, so that a chat banner or `clm-local info` tells
    it from the base and from other checkpoints of it)."""
    manifest = checkpoint_manifest.read(checkpoint)
    base = base or manifest.base_gguf()
    reader = open_gguf(base)
    arch = check_gguf_source(reader, base)
    block_count = _block_count_entry(reader, arch, base)
    n_base = block_count.value - 1
    check_gemma_block_count(arch, n_base, base)
    per_block = per_block_entries(reader, arch, n_base=n_base, n_pre_layers=1, source=base)
    base_sha256 = sha256_file(base)
    manifest.check_base(base, arch, n_base, base_sha256, force=force_base)

    pre_layer = _pre_layer_tensors(checkpoint / manifest.pre_layer_file, reader, base, arch, outtype)
    tensors = _grafted_tensors(reader, pre_layer)
    name = checkpoint_model_name(_base_name(reader, base), checkpoint) if name is None else name
    named = {gguf.Keys.General.NAME: MetadataEntry(gguf.Keys.General.NAME, name, gguf.GGUFValueType.STRING)}
    replaced = {block_count.key: block_count, **per_block, **named}
    metadata = copy_metadata(reader, replace=replaced)
    metadata += [entry for key, entry in {**per_block, **named}.items() if key not in reader.fields]
    metadata += clm_entries(
        pre_layers=1,
        alpha_default=alpha_default,
        mix_default=mix_default,
        base={"name": _base_name(reader, base), "file": base.name, "sha256": base_sha256},
        train=manifest.train,
    )
    write_gguf(out, arch, metadata, tensors, force=force)


def _pre_layer_tensors(
    weights: Path, reader: gguf.GGUFReader, base: Path, arch: str, outtype: str
) -> list[OutputTensor]:
    """P in GGUF form, checked name by name and shape by shape against the base's block 0."""
    source = read_safetensors(weights)
    heads = read_heads(reader, base, arch)
    converted: dict[str, OutputTensor] = {}
    hf_names: dict[str, str] = {}
    for hf_name, tensor in source.items():
        if not hf_name.startswith(_P_PREFIX):
            raise ClmError(f"{weights.name} holds {hf_name}; a pre-layer has only {_P_PREFIX}* tensors")
        output = to_gguf_tensor(arch, hf_name, tensor, n_blocks=1, heads=heads, outtype=outtype)
        converted[output.name] = output
        hf_names[output.name] = hf_name
    block_0 = {t.name: tuple(int(n) for n in t.shape) for t in reader.tensors if t.name.startswith("blk.0.")}
    if missing := sorted(block_0.keys() - converted.keys()):
        raise ClmError(f"{weights.name} does not match the base: it lacks {', '.join(missing)}")
    if extra := sorted(converted.keys() - block_0.keys()):
        names = ", ".join(hf_names[name] for name in extra)
        raise ClmError(f"{weights.name} does not match the base: the base's block 0 has no {names}")
    for name, ne in block_0.items():
        output = converted[name]
        if output.ne != ne:
            raise ClmError(
                f"{weights.name} does not match the base: {hf_names[name]} has shape "
                f"{tuple(reversed(output.ne))}, the base's is {tuple(reversed(ne))}"
            )
    # In the base's own tensor order, so that blk.0 reads like every other block.
    return [converted[name] for name in block_0]


def _grafted_tensors(reader: gguf.GGUFReader, pre_layer: list[OutputTensor]) -> list[OutputTensor]:
    """Base tensors with their blocks renumbered, P inserted just before the first block."""
    tensors: list[OutputTensor] = []
    inserted = False
    for tensor in reader.tensors:
        match = _BLOCK_NAME.fullmatch(tensor.name)
        if match is None:
            tensors.append(copy_tensor(tensor))
            continue
        if not inserted:
            tensors.extend(pre_layer)
            inserted = True
        tensors.append(copy_tensor(tensor, f"blk.{int(match[1]) + 1}.{match[2]}"))
    return tensors


def _block_count_entry(reader: gguf.GGUFReader, arch: str, base: Path) -> MetadataEntry:
    """`{arch}.block_count` raised by one, in the base's own GGUF type."""
    key = gguf.Keys.LLM.BLOCK_COUNT.format(arch=arch)
    field = reader.get_field(key)
    if field is None:
        raise ClmError(f"{base} has no {key} key")
    return MetadataEntry(key, int(field.contents()) + 1, field.types[0])


def checkpoint_model_name(base_name: str, checkpoint: Path) -> str:
    """The display name of a base with a trained P: the base's, then the checkpoint folder's."""
    return f"{base_name} + CLM {checkpoint.resolve().name}"


def _base_name(reader: gguf.GGUFReader, base: Path) -> str:
    return field_value(reader, gguf.Keys.General.NAME) or base.stem


def read_heads(reader: gguf.GGUFReader, base: Path, arch: str) -> Heads:
    n_head = int(require_value(reader, gguf.Keys.Attention.HEAD_COUNT.format(arch=arch), base))
    n_head_kv = reader.get_field(gguf.Keys.Attention.HEAD_COUNT_KV.format(arch=arch))
    return Heads(n_head, n_head if n_head_kv is None else int(n_head_kv.contents()))
