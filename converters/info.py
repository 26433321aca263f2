"""`clm-local info FILE.gguf`: what a GGUF holds, read from its header alone.

Also the summary `convert` prints at the end (it re-reads the file it just wrote, which doubles as
a check that the output parses).
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

import gguf
import numpy as np

from clm_local.gguf.check import check_gguf, tensors_with_non_finite_values
from clm_local.gguf.header import GgufHeader, StringArray, TensorInfo, Value
from clm_local.gguf.keys import (
    KEY_ALPHA_DEFAULT,
    KEY_MIX_DEFAULT,
    KEY_PRE_LAYER_COUNT,
    PREFIX_BASE,
    PREFIX_TRAIN,
)


@dataclass(frozen=True)
class GgufInfo:
    path: str
    file_bytes: int
    architecture: str
    name: str | None
    n_blocks: int | None  # {arch}.block_count: base blocks plus pre-layers
    n_pre_layers: int  # 0: not a CLM file
    alpha_default: float | None
    mix_default: str | None
    base: dict[str, object]  # clm.base.* without the prefix
    train: dict[str, object]  # clm.train.*
    tensor_types: dict[str, int]  # type name -> number of tensors
    pre_layer_types: dict[str, int]
    n_params: int
    n_pre_layer_params: int
    pre_layer_bytes: int
    non_finite_tensors: list[str] | None = None  # None: not checked (see --check-values)

    @property
    def pre_layer_share(self) -> float:
        return self.n_pre_layer_params / self.n_params if self.n_params else 0.0

    def to_json(self) -> dict[str, object]:
        return asdict(self) | {"pre_layer_share": self.pre_layer_share}


def read_info(path: Path, *, check_values: bool = False) -> GgufInfo:
    """What the header of `path` says, after clm_local.gguf.check validated it; with check_values,
    also decode every tensor and list those holding NaN or Inf."""
    header = check_gguf(path)
    values = header.values
    arch = str(values[gguf.Keys.General.ARCHITECTURE])
    n_pre_layers = int(values.get(KEY_PRE_LAYER_COUNT, 0))
    pre_layer = [t for t in header.tensors if _block_index(t.name) < n_pre_layers]
    alpha_default = values.get(KEY_ALPHA_DEFAULT)
    return GgufInfo(
        path=str(path),
        file_bytes=header.file_size,
        architecture=arch,
        name=values.get(gguf.Keys.General.NAME),
        n_blocks=int(values[gguf.Keys.LLM.BLOCK_COUNT.format(arch=arch)]),
        n_pre_layers=n_pre_layers,
        alpha_default=None if alpha_default is None else float(alpha_default),
        mix_default=values.get(KEY_MIX_DEFAULT),
        base=_with_prefix(header, PREFIX_BASE),
        train=_with_prefix(header, PREFIX_TRAIN),
        tensor_types=_type_counts(header.tensors),
        pre_layer_types=_type_counts(pre_layer),
        n_params=sum(t.n_elements for t in header.tensors),
        n_pre_layer_params=sum(t.n_elements for t in pre_layer),
        pre_layer_bytes=sum(t.n_bytes for t in pre_layer),
        non_finite_tensors=tensors_with_non_finite_values(header) if check_values else None,
    )


def format_info(info: GgufInfo) -> str:
    """A one-screen description for people."""
    lines = [
        f"file          {info.path} ({_size(info.file_bytes)})",
        f"model         {info.name or '(unnamed)'}, architecture {info.architecture}",
    ]
    if info.n_pre_layers:
        pre = _count(info.n_pre_layers, "pre-layer")
        base = _count((info.n_blocks or 0) - info.n_pre_layers, "base block")
        lines += [
            f"blocks        {info.n_blocks} = {pre} + {base}",
            f"defaults      alpha {_number(info.alpha_default)}, mix {info.mix_default or 'logits'}",
            f"pre-layer     {_params(info.n_pre_layer_params)} parameters, {info.pre_layer_share:.1%} of "
            f"{_params(info.n_params)}; {_size(info.pre_layer_bytes)} as {_types(info.pre_layer_types)}",
        ]
    else:
        lines += [
            f"blocks        {info.n_blocks}, no pre-layer (an ordinary model, not a CLM file)",
            f"parameters    {_params(info.n_params)}",
        ]
    lines.append(f"tensor types  {_types(info.tensor_types)}")
    if info.non_finite_tensors is not None:
        bad = info.non_finite_tensors
        lines += _wrapped("values", [f"NaN or Inf in {len(bad)} tensors", *bad] if bad else ["all finite"])
    for title, values in (("base", info.base), ("training", info.train)):
        if values:
            lines += _wrapped(title, [f"{k} = {_number(v)}" for k, v in values.items()])
    return "\n".join(lines)


def _wrapped(title: str, items: list[str], width: int = 100) -> list[str]:
    """`title` then comma-separated items, broken between items only, indented under the first."""
    lines = [f"{title:<14}"]
    for item in items:
        if len(lines[-1]) > 14 and len(lines[-1]) + len(item) + 2 > width:
            lines[-1] += ","
            lines.append(" " * 14)
        elif len(lines[-1]) > 14:
            lines[-1] += ", "
        lines[-1] += item
    return lines


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def _block_index(tensor_name: str) -> float:
    """The block a tensor belongs to; infinity for tensors outside the blocks (embeddings, head)."""
    match = re.match(r"blk\.(\d+)\.", tensor_name)
    return int(match[1]) if match else math.inf


def _with_prefix(header: GgufHeader, prefix: str) -> dict[str, object]:
    return {
        key.removeprefix(prefix): _plain(value)
        for key, value in header.values.items()
        if key.startswith(prefix)
    }


def _plain(value: Value) -> object:
    """A metadata value as JSON can hold it (arrays summarised, not listed)."""
    if isinstance(value, StringArray):
        return f"[{value.count} strings]"
    if isinstance(value, np.ndarray):
        return f"[{value.size} numbers]"
    return value


def _type_counts(tensors: Iterable[TensorInfo]) -> dict[str, int]:
    return dict(Counter(t.ggml_type.name for t in tensors).most_common())


def _types(counts: dict[str, int]) -> str:
    return ", ".join(f"{name} x{count}" for name, count in counts.items()) or "none"


def _size(n_bytes: int) -> str:
    if n_bytes < 1024:
        return f"{n_bytes} B"
    size = n_bytes / 1024
    for unit in ("KiB", "MiB"):
        if size < 1024:
            return f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GiB"


def _params(count: int) -> str:
    for unit, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if count >= scale:
            return f"{count / scale:.2f}{unit}"
    return str(count)


def _number(value: object) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)
