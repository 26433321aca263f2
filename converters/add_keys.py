"""Path (c): make a CLM file of a GGUF that llama.cpp's own converter made from an expanded folder.

Such a file already has the CLM layout (`blk.0` = P, N+1 blocks); it lacks the clm.* keys that tell
the runtime so, and the per-block hyperparameters that llama.cpp's converter leaves to be derived
from the block index (Gemma's sliding-window flags), which layer_patterns.py states with P's entry
first. Everything else, tensors and metadata alike, is copied byte for byte.
"""

from __future__ import annotations

from pathlib import Path

import gguf

from clm_local.errors import ClmError
from clm_local.gguf.file import open_gguf

from .clm_metadata import check_gguf_source, clm_entries
from .gguf_io import copy_metadata, copy_tensor, require_value, write_gguf
from .layer_patterns import check_gemma_block_count, per_block_entries
from .layout_check import check_pre_layers


def add_clm_keys(
    source: Path,
    out: Path,
    *,
    pre_layers: int,
    alpha_default: float,
    mix_default: str,
    force: bool,
    trust_layout: bool = False,
) -> None:
    """Write `out`: `source` with the clm.* keys declaring its first `pre_layers` blocks as P, which
    must look like pre-layers (layout_check.py) unless `trust_layout`."""
    reader = open_gguf(source)
    arch = check_gguf_source(reader, source)
    n_blocks = int(require_value(reader, gguf.Keys.LLM.BLOCK_COUNT.format(arch=arch), source))
    if n_blocks <= pre_layers:
        raise ClmError(
            f"{source} has {n_blocks} blocks: too few to hold {pre_layers} pre-layer(s) and a model"
        )
    n_base = n_blocks - pre_layers
    check_gemma_block_count(arch, n_base, source)
    per_block = per_block_entries(reader, arch, n_base=n_base, n_pre_layers=pre_layers, source=source)
    metadata = copy_metadata(reader, replace=per_block)
    metadata += [entry for key, entry in per_block.items() if key not in reader.fields]
    metadata += clm_entries(pre_layers=pre_layers, alpha_default=alpha_default, mix_default=mix_default)
    tensors = [copy_tensor(t) for t in reader.tensors]
    if not trust_layout:
        check_pre_layers(tensors, pre_layers, source)
    write_gguf(out, arch, metadata, tensors, force=force)
