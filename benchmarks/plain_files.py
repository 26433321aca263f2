"""The two ordinary GGUFs the benchmark compares a CLM file with, written from the CLM file itself.

- base:    the CLM file without its pre-layers and clm.* keys, blocks renumbered from 0: the base
           model exactly as a stock llama.cpp runs it (grafting copies base tensors byte for byte,
           so this is the user's base file up to metadata);
- aligned: the CLM file without its clm.* keys: the N+1-block model a stock llama.cpp sees (a=1).

Deriving both from MODEL means any CLM file can be benchmarked without naming its base, and the
two-model configuration runs the very weights the CLM configurations run.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import gguf
from clm_local.converters.gguf_io import (
    MetadataEntry,
    OutputTensor,
    copy_metadata,
    copy_tensor,
    write_gguf,
)

from clm_local.errors import ClmError
from clm_local.gguf.file import open_gguf
from clm_local.runtime.model import read_info

# Every key a CLM file adds to an ordinary GGUF starts with this (clm_local.gguf.keys).
_CLM_KEY_PREFIX = "clm."
_BLOCK_NAME = re.compile(r"blk\.(\d+)\.(.+)")


@dataclass(frozen=True)
class BenchFiles:
    """The GGUFs the configurations load: the CLM file and its two plain derivatives."""

    clm: Path
    base: Path
    aligned: Path


def write_plain_files(clm: Path, folder: Path) -> BenchFiles:
    """Write `base.gguf` and `aligned.gguf` into `folder`; refuse a file without a pre-layer."""
    info = read_info(clm)
    if not info.is_clm:
        raise ClmError(
            f"{clm} has no CLM pre-layer: the benchmark compares the alignment modes of a CLM file "
            "(make one with `clm-local convert`)"
        )
    reader = open_gguf(clm)
    block_count_key = gguf.Keys.LLM.BLOCK_COUNT.format(arch=info.architecture)
    block_count = reader.get_field(block_count_key)
    base_blocks = MetadataEntry(block_count_key, info.n_blocks - info.n_pre_layers, block_count.types[0])

    files = BenchFiles(clm=clm, base=folder / "base.gguf", aligned=folder / "aligned.gguf")
    write_gguf(
        files.aligned,
        info.architecture,
        _without_clm_keys(copy_metadata(reader, replace={})),
        [copy_tensor(tensor) for tensor in reader.tensors],
        force=True,
    )
    write_gguf(
        files.base,
        info.architecture,
        _without_clm_keys(copy_metadata(reader, replace={block_count_key: base_blocks})),
        _base_tensors(reader, info.n_pre_layers),
        force=True,
    )
    return files


def _without_clm_keys(entries: list[MetadataEntry]) -> list[MetadataEntry]:
    return [entry for entry in entries if not entry.key.startswith(_CLM_KEY_PREFIX)]


def _base_tensors(reader: gguf.GGUFReader, n_pre_layers: int) -> list[OutputTensor]:
    """Every tensor but the pre-layers', with the base blocks renumbered from 0."""
    tensors: list[OutputTensor] = []
    for tensor in reader.tensors:
        match = _BLOCK_NAME.fullmatch(tensor.name)
        if match is None:
            tensors.append(copy_tensor(tensor))
        elif int(match[1]) >= n_pre_layers:
            tensors.append(copy_tensor(tensor, f"blk.{int(match[1]) - n_pre_layers}.{match[2]}"))
    return tensors
