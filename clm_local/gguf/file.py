"""Open a GGUF with gguf-py's reader (tensor data included) once it has been validated.

The validation is clm_local.gguf.check's (shared with the runtime and `info`); this module adds
gguf-py's reader for the converters, which copy tensors, and reads its values as plain objects.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from gguf import GGUFReader, GGUFValueType

from clm_local.errors import ClmError
from clm_local.gguf.check import check_gguf


def open_gguf(path: str | Path) -> GGUFReader:
    """A GGUFReader over `path` once clm_local.gguf.check has validated the file (bounded, cheap),
    or ClmError saying plainly what is wrong with it."""
    header = check_gguf(path)
    try:
        return GGUFReader(header.path)
    except Exception as error:  # gguf-py raises ValueError, IndexError, struct errors, ...
        raise ClmError(f"{path}: corrupt GGUF ({type(error).__name__}: {error})") from None


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
