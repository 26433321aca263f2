"""Open and validate a GGUF file before anything trusts it.

llama.cpp and gguf-py fail on a bad file in many ways (exceptions of every type, and on some paths
an abort); this module turns "missing, not a GGUF, truncated, corrupt" into one ClmError line, and
reads metadata values as plain Python objects.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from gguf import GGUFReader, GGUFValueType

from clm_local.errors import ClmError

GGUF_MAGIC = b"GGUF"


def open_gguf(path: str | Path) -> GGUFReader:
    """A GGUFReader over `path`, or ClmError saying plainly what is wrong with the file."""
    path = Path(path)
    if not path.exists():
        raise ClmError(f"{path}: no such file")
    if not path.is_file():
        raise ClmError(f"{path}: not a file")
    with path.open("rb") as handle:
        if handle.read(4) != GGUF_MAGIC:
            raise ClmError(f"{path}: not a GGUF file (wrong magic bytes)")
    try:
        reader = GGUFReader(path)
    except Exception as error:  # gguf-py raises ValueError, IndexError, struct errors, ...
        raise ClmError(f"{path}: corrupt or truncated GGUF ({type(error).__name__}: {error})") from None
    _check_tensor_data_in_file(path, reader)
    return reader


def _check_tensor_data_in_file(path: Path, reader: GGUFReader) -> None:
    size = path.stat().st_size
    for tensor in reader.tensors:
        end = int(tensor.data_offset) + int(tensor.n_bytes)
        if end > size:
            raise ClmError(
                f"{path}: truncated GGUF (tensor {tensor.name} ends at byte {end}, file has {size})"
            )


def field_value(reader: GGUFReader, key: str) -> Any:
    """A metadata value as str, int, float, bool or list; None when the key is absent."""
    field = reader.get_field(key)
    if field is None:
        return None
    kind = field.types[0]
    if kind == GGUFValueType.STRING:
        return bytes(field.parts[field.data[0]]).decode("utf-8", errors="replace")
    if kind == GGUFValueType.ARRAY:
        item_kind = field.types[1] if len(field.types) > 1 else None
        if item_kind == GGUFValueType.STRING:
            return [bytes(field.parts[i]).decode("utf-8", errors="replace") for i in field.data]
        return [field.parts[i].tolist()[0] for i in field.data]
    value = field.parts[field.data[0]]
    scalar = np.asarray(value).reshape(-1)[0]
    if kind == GGUFValueType.BOOL:
        return bool(scalar)
    if kind in (GGUFValueType.FLOAT32, GGUFValueType.FLOAT64):
        return float(scalar)
    return int(scalar)
