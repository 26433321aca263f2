"""A small, validating safetensors reader on numpy memory maps.

Why not `safetensors.numpy`: numpy has no bfloat16, so it refuses the BF16 checkpoints that most
models ship, and the torch loader would make torch a requirement of the laptop path. The format
is simple (an 8-byte header length, a JSON header, then raw little-endian data), so it is read
here directly: tensors are memory-mapped and decoded one at a time, and every inconsistency of a
truncated or corrupt file becomes one ClmError line.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from clm_local.errors import ClmError

# Storage dtype of each safetensors type; BF16 is kept as its raw 16 bits until decoded.
_STORAGE = {
    "F64": np.dtype("<f8"),
    "F32": np.dtype("<f4"),
    "F16": np.dtype("<f2"),
    "BF16": np.dtype("<u2"),
    "I64": np.dtype("<i8"),
    "I32": np.dtype("<i4"),
    "I16": np.dtype("<i2"),
    "I8": np.dtype("i1"),
    "U8": np.dtype("u1"),
    "BOOL": np.dtype("?"),
}
FLOAT_DTYPES = ("F64", "F32", "F16", "BF16")

# A header larger than this is not a real checkpoint (the format's own reader caps it at 100 MB).
_MAX_HEADER_BYTES = 100_000_000


@dataclass(frozen=True)
class SafeTensor:
    """One tensor of a safetensors file: its type name ("BF16", ...), shape and raw storage."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    storage: np.ndarray  # memory-mapped, already in `shape`

    def to_float32(self) -> np.ndarray:
        """Decode to float32 (exact for F16 and BF16, the types checkpoints use)."""
        if self.dtype not in FLOAT_DTYPES:
            raise ClmError(f"tensor {self.name} has type {self.dtype}, expected a float type")
        if self.dtype == "BF16":
            # bfloat16 is the top half of a float32.
            return (self.storage.astype(np.uint32) << 16).view(np.float32)
        return self.storage.astype(np.float32)


def read_safetensors(path: Path) -> dict[str, SafeTensor]:
    """All tensors of a .safetensors file, memory-mapped, after checking the file is whole."""
    if not path.is_file():
        raise ClmError(f"{path}: no such file")
    try:
        file_size = path.stat().st_size
        header, data_start = _read_header(path, file_size)
        data_size = file_size - data_start
        mapped = np.memmap(path, np.uint8, "r", offset=data_start, shape=(data_size,)) if data_size else None
    except OSError as error:  # unreadable (permissions, I/O error)
        raise ClmError(f"cannot read {path}: {error.strerror or error}") from None
    tensors = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        tensors[name] = _tensor(path, name, info, mapped, data_size)
    return tensors


def _read_header(path: Path, file_size: int) -> tuple[dict, int]:
    """The parsed JSON header and the offset where the tensor data starts."""
    with open(path, "rb") as stream:
        prefix = stream.read(8)
        if len(prefix) < 8:
            raise ClmError(f"{path} is not a safetensors file (shorter than its header)")
        (length,) = struct.unpack("<Q", prefix)
        if length > min(_MAX_HEADER_BYTES, file_size - 8):
            raise ClmError(f"{path} is truncated or not a safetensors file (bad header length)")
        raw = stream.read(length)
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise ClmError(f"{path} is corrupt (its header is not JSON)") from None
    if not isinstance(header, dict):
        raise ClmError(f"{path} is corrupt (its header is not a JSON object)")
    return header, 8 + length


def _tensor(path: Path, name: str, info: object, mapped: np.ndarray | None, data_size: int) -> SafeTensor:
    try:
        dtype = info["dtype"]  # type: ignore[index]
        shape = tuple(int(n) for n in info["shape"])  # type: ignore[index]
        begin, end = (int(n) for n in info["data_offsets"])  # type: ignore[index]
    except (KeyError, TypeError, ValueError):
        raise ClmError(f"{path} is corrupt (bad header entry for {name})") from None
    if dtype not in _STORAGE:
        raise ClmError(f"{path}: tensor {name} has unsupported type {dtype}")
    storage_dtype = _STORAGE[dtype]
    expected = int(np.prod(shape, dtype=np.int64)) * storage_dtype.itemsize
    if not 0 <= begin <= end or end - begin != expected:
        raise ClmError(f"{path} is corrupt (tensor {name}: offsets do not match its shape)")
    if end > data_size:
        raise ClmError(f"{path} is truncated (tensor {name} ends past the end of the file)")
    raw = mapped[begin:end] if mapped is not None else np.zeros(0, dtype=np.uint8)
    return SafeTensor(name, dtype, shape, raw.view(storage_dtype).reshape(shape))
