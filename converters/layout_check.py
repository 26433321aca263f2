"""Paths (b) and (c) take the first blocks of a model as its pre-layers: check they look like some.

An expanded Hugging Face folder or a GGUF made from one is an ordinary model file: nothing in it
says that block 0 is P. Given an ordinary model by mistake, `convert` would declare its first
real block a pre-layer and every alpha other than 1 would silently cut it out. A pre-layer starts
as a copy of the base's first block and preference training moves it a little (the shipped P by
about 0.5%), so its input projections (q, k, v; gate, up) stay close to that block's, while the
first two blocks of an ordinary model are unrelated (relative distance about 1.4 for random
weights, near 1 for trained ones). `o`/`down` projections and norms are left out: they start
zeroed in P. `--trust-layout` skips the check, for a P trained from another initialisation.
"""

from __future__ import annotations

import statistics
from pathlib import Path

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType
from gguf.quants import dequantize

from clm_local.errors import ClmError

from .gguf_io import OutputTensor

COMPARED_PARTS = (
    "attn_q.weight",
    "attn_k.weight",
    "attn_v.weight",
    "attn_qkv.weight",
    "ffn_gate.weight",
    "ffn_up.weight",
)
# The median over those parts of |P - B| / |B| (B: the first base block's weight) must be below
# this. A trained P is far below (0.005 for the shipped one); unrelated blocks are far above.
MAX_RELATIVE_DISTANCE = 0.5


def check_pre_layers(tensors: list[OutputTensor], pre_layers: int, source: Path) -> None:
    """ClmError unless each of the first `pre_layers` blocks is close to block `pre_layers`."""
    by_name = {tensor.name: tensor for tensor in tensors}
    first_base = pre_layers
    for block in range(pre_layers):
        distances = []
        for part in COMPARED_PARTS:
            candidate = by_name.get(f"blk.{block}.{part}")
            reference = by_name.get(f"blk.{first_base}.{part}")
            if candidate is None or reference is None or candidate.ne != reference.ne:
                continue
            base = _values(reference)
            distances.append(
                float(np.linalg.norm(_values(candidate) - base) / max(np.linalg.norm(base), 1e-30))
            )
        if not distances:
            raise ClmError(
                f"{source}: cannot check that block {block} is a pre-layer (no q/k/v or gate/up weights "
                f"shared with block {first_base}); pass --trust-layout if it is one"
            )
        distance = statistics.median(distances)
        if distance > MAX_RELATIVE_DISTANCE:
            raise ClmError(
                f"{source}: block {block} does not look like a pre-layer: its q/k/v and gate/up weights "
                f"differ from block {first_base}'s by {distance:.0%}, where a pre-layer starts as a copy of "
                "the base's first block; is this an ordinary model? (--trust-layout converts it anyway)"
            )


def _values(tensor: OutputTensor) -> np.ndarray:
    """The tensor's values as float32, whatever its encoding."""
    raw = np.ascontiguousarray(tensor.materialize()).view(np.uint8).reshape(-1)
    kind = GGMLQuantizationType(tensor.ggml_type)
    if kind in (GGMLQuantizationType.F32, GGMLQuantizationType.F16):
        return dequantize(raw, kind).reshape(-1)
    block_size, type_size = GGML_QUANT_SIZES[kind]
    return dequantize(raw.reshape(-1, tensor.ne[0] // block_size * type_size), kind).reshape(-1)
