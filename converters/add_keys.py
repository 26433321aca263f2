"""Path (c): make a CLM file of a GGUF that llama.cpp's own converter made from an expanded folder.

Such a file already has the CLM layout (`blk.0` = P, N+1 blocks); it only lacks the clm.* keys
that tell the runtime so. Everything else, tensors and metadata alike, is copied byte for byte.
"""

from __future__ import annotations

from pathlib import Path

import gguf

from clm_local.errors import ClmError
from clm_local.gguf_file import open_gguf

from .clm_metadata import check_gguf_source, clm_entries
from .gguf_io import copy_metadata, copy_tensor, require_value, write_gguf


def add_clm_keys(
    source: Path,
    out: Path,
    *,
    pre_layers: int,
    alpha_default: float,
    mix_default: str,
    force: bool,
) -> None:
    """Write `out`: `source` with the clm.* keys declaring its first `pre_layers` blocks as P."""
    reader = open_gguf(source)
    arch = check_gguf_source(reader, source)
    n_blocks = int(require_value(reader, gguf.Keys.LLM.BLOCK_COUNT.format(arch=arch), source))
    if n_blocks <= pre_layers:
        raise ClmError(
            f"{source} has {n_blocks} blocks: too few to hold {pre_layers} pre-layer(s) and a model"
        )
    metadata = copy_metadata(reader, replace={})
    metadata += clm_entries(pre_layers=pre_layers, alpha_default=alpha_default, mix_default=mix_default)
    write_gguf(out, arch, metadata, [copy_tensor(t) for t in reader.tensors], force=force)
