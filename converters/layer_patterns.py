"""Per-block hyperparameters of a file that gets pre-layers in front of its base blocks.

llama.cpp reads a few hyperparameters per block: an array with one value per block, or a scalar
it applies to every block. The sliding-window flags are the exception that matters: when the file
does not state them, llama.cpp derives them from the block index (Gemma 2: every 2nd block global,
Gemma 3: every 6th), and the RoPE base of each block follows its flag. Inserting P at index 0 would
shift that derived pattern by one, so every base block would get its neighbour's attention type.

The rule CLM.md sets: the file states every per-block value explicitly, P's first (P is a copy of
base block 0, so it takes block 0's values), and the base blocks keep the values they had.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gguf
from gguf import GGUFValueType

from clm_local.errors import ClmError
from clm_local.gguf.file import field_value
from clm_local.gguf.keys import SLIDING_WINDOW_PERIODS

from .gguf_io import MetadataEntry

# The `{arch}.*` keys llama.cpp reads as one value per block (llama_model_base::load_hparams and
# load_swa_pattern in the vendored llama.cpp): an array here has one entry per block.
PER_BLOCK_KEYS = (
    gguf.Keys.LLM.FEED_FORWARD_LENGTH,
    gguf.Keys.Attention.HEAD_COUNT,
    gguf.Keys.Attention.HEAD_COUNT_KV,
    gguf.Keys.Attention.SLIDING_WINDOW_PATTERN,
)

# llama.cpp picks the attention scale of Gemma 2 and 3 by block count: the 27B models (46 and 62
# blocks) use 1/sqrt(n_embd / n_head), every other size 1/sqrt(head_dim). A pre-layer changes the
# block count, so a 27B base would silently get the wrong scale.
_GEMMA_27B_BLOCKS = {"gemma2": 46, "gemma3": 62}


def check_gemma_attention_scale(raw_config: dict[str, Any], head_dim: int) -> None:
    """Refuse a Gemma config whose attention scale llama.cpp would not reproduce with P inserted."""
    scalar = raw_config.get("query_pre_attn_scalar", head_dim)
    if scalar != head_dim:
        raise ClmError(
            f"query_pre_attn_scalar {scalar} differs from head_dim {head_dim} (Gemma 27B): llama.cpp derives "
            "that scale from the block count, which a pre-layer changes; this model is not supported"
        )


def check_gemma_block_count(arch: str, n_base_blocks: int, source: Path) -> None:
    if _GEMMA_27B_BLOCKS.get(arch) == n_base_blocks:
        raise ClmError(
            f"{source}: a {arch} model with {n_base_blocks} blocks (27B) is not supported: llama.cpp "
            "derives its attention scale from the block count, which a pre-layer changes"
        )


def per_block_entries(
    reader: gguf.GGUFReader, arch: str, *, n_base: int, n_pre_layers: int, source: Path
) -> dict[str, MetadataEntry]:
    """Replacements for the per-block keys of `reader`, for a CLM file of n_pre_layers + n_base blocks.

    `reader` is a base file (path a: N blocks) or a file that already holds P (path c: N + K
    blocks). An array with one entry per base block gets block 0's entry in front for each
    pre-layer; one that already covers every block is kept; the sliding-window flags llama.cpp
    would derive from the index are computed for the base blocks and written the same way.
    """
    replaced: dict[str, MetadataEntry] = {}
    for template in PER_BLOCK_KEYS:
        key = template.format(arch=arch)
        if not _has_array(reader, key):
            continue
        field = reader.fields[key]
        values = [field.parts[index][0].item() for index in field.data]
        if len(values) == n_base + n_pre_layers:
            continue  # already one entry per block of the CLM file
        if len(values) != n_base:
            raise ClmError(f"{source}: {key} has {len(values)} entries for {n_base} base blocks")
        replaced[key] = MetadataEntry(
            key, [values[0]] * n_pre_layers + values, GGUFValueType.ARRAY, field.types[1]
        )
    flags_key = gguf.Keys.Attention.SLIDING_WINDOW_PATTERN.format(arch=arch)
    if not _has_array(reader, flags_key):
        flags = _derived_sliding_flags(reader, arch, n_base)
        if flags is not None:
            replaced[flags_key] = MetadataEntry(
                flags_key, [flags[0]] * n_pre_layers + flags, GGUFValueType.ARRAY, GGUFValueType.BOOL
            )
    return replaced


def _has_array(reader: gguf.GGUFReader, key: str) -> bool:
    field = reader.get_field(key)
    return field is not None and field.types[0] == GGUFValueType.ARRAY


def _derived_sliding_flags(reader: gguf.GGUFReader, arch: str, n_base: int) -> list[bool] | None:
    """The flags llama.cpp derives for the base's N blocks (set_swa_pattern), or None without SWA."""
    if arch not in SLIDING_WINDOW_PERIODS:
        return None
    if arch == "gemma3" and not field_value(reader, gguf.Keys.Attention.SLIDING_WINDOW.format(arch=arch)):
        return None  # llama.cpp's Gemma 3 has no sliding window at all without this key
    period = field_value(reader, gguf.Keys.Attention.SLIDING_WINDOW_PATTERN.format(arch=arch))
    period = SLIDING_WINDOW_PERIODS[arch] if period is None else int(period)
    return [period == 0 or block % period < period - 1 for block in range(n_base)]
