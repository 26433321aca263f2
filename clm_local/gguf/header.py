"""Read a GGUF header (metadata and tensor infos) with every count and length bounded by the file.

gguf-py's GGUFReader turns every value into numpy arrays (the default model's 49k-token vocabulary
costs about 1.5 s and 160 MiB) and trusts the counts it reads, so a forged count makes it allocate
gigabytes or loop for hours. This reader is the cheap first look at a file: it walks the header
once through a memory map, refuses any count or length the rest of the file cannot hold, and
skips over string arrays (the vocabulary, the merges) reading only their lengths. It reads no
tensor data. What the values mean is checked in clm_local.gguf.check.
"""

from __future__ import annotations

import math
import mmap
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from clm_local.errors import ClmError
from clm_local.gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFValueType
from clm_local.gguf.string_cache import StringArrayCache

GGUF_MAGIC = b"GGUF"
SUPPORTED_VERSIONS = (2, 3)  # what llama.cpp's gguf.cpp reads
DEFAULT_ALIGNMENT = 32
ALIGNMENT_KEY = "general.alignment"
MAX_TENSOR_NAME = 63  # GGML_MAX_NAME (64) with the terminating NUL
MAX_DIMS = 4  # GGML_MAX_DIMS

_SCALAR_FORMATS = {
    GGUFValueType.UINT8: "<B",
    GGUFValueType.INT8: "<b",
    GGUFValueType.UINT16: "<H",
    GGUFValueType.INT16: "<h",
    GGUFValueType.UINT32: "<I",
    GGUFValueType.INT32: "<i",
    GGUFValueType.FLOAT32: "<f",
    GGUFValueType.BOOL: "<B",
    GGUFValueType.UINT64: "<Q",
    GGUFValueType.INT64: "<q",
    GGUFValueType.FLOAT64: "<d",
}
INTEGER_TYPES = frozenset(
    {
        GGUFValueType.UINT8,
        GGUFValueType.INT8,
        GGUFValueType.UINT16,
        GGUFValueType.INT16,
        GGUFValueType.UINT32,
        GGUFValueType.INT32,
        GGUFValueType.UINT64,
        GGUFValueType.INT64,
    }
)
FLOAT_TYPES = frozenset({GGUFValueType.FLOAT32, GGUFValueType.FLOAT64})
_ARRAY_DTYPES = {
    kind: np.dtype(fmt.replace("B", "u1").replace("b", "i1")) for kind, fmt in _SCALAR_FORMATS.items()
}

# The smallest a key/value pair and a tensor info can be, to bound counts by the bytes left.
_MIN_KV_BYTES = 8 + 1 + 4 + 1  # key length, a 1-byte key, value type, a 1-byte value
_MIN_TENSOR_INFO_BYTES = 8 + 1 + 4 + 8 + 4 + 8  # name length, name, n_dims, one dim, type, offset


@dataclass(frozen=True)
class StringArray:
    """A string array left in the file (a vocabulary, merges): its length and where it starts."""

    count: int
    offset: int  # file offset of the first item's length
    distinct: int  # how many different items it holds (a vocabulary must not repeat one)


@dataclass(frozen=True)
class TensorInfo:
    """One tensor as the header declares it; `ne` is the ggml shape (innermost dimension first)."""

    name: str
    ne: tuple[int, ...]
    ggml_type: GGMLQuantizationType
    offset: int  # absolute file offset of its data
    n_bytes: int

    @property
    def n_elements(self) -> int:
        return math.prod(self.ne)


# A metadata value: scalars as Python values, numeric arrays as numpy arrays, string arrays unread.
Value = str | int | float | bool | np.ndarray | StringArray


@dataclass(frozen=True)
class GgufHeader:
    """Everything before the tensor data: metadata (`values`, `types`) and tensor infos."""

    path: Path
    file_size: int
    version: int
    values: dict[str, Value]
    types: dict[str, tuple[GGUFValueType, GGUFValueType | None]]  # (type, item type of an ARRAY)
    tensors: tuple[TensorInfo, ...]
    alignment: int
    data_offset: int

    def get(self, key: str) -> Value | None:
        return self.values.get(key)

    def strings(self, key: str) -> Iterator[bytes]:
        """The raw items of a string array, read from the file one by one (bounds already checked)."""
        array = self.values[key]
        if not isinstance(array, StringArray):
            raise TypeError(f"{key} is not a string array")
        with self.path.open("rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as data:
            for begin, length in _item_spans(data, array.offset, array.count):
                yield bytes(data[begin : begin + length])


class _Cursor:
    """A read position in the mapped file; every read is checked against the end first."""

    def __init__(self, data: mmap.mmap, size: int) -> None:
        self.data = data
        self.size = size
        self.position = 0

    @property
    def left(self) -> int:
        return self.size - self.position

    def take(self, n_bytes: int, what: str) -> int:
        """Advance past n_bytes and return where they start; refuse reading past the end."""
        if n_bytes > self.left:
            raise ClmError(f"truncated or corrupt GGUF: {what} needs {n_bytes} bytes, {self.left} left")
        start = self.position
        self.position += n_bytes
        return start

    def scalar(self, fmt: str, what: str) -> int | float:
        start = self.take(struct.calcsize(fmt), what)
        return struct.unpack_from(fmt, self.data, start)[0]

    def u32(self, what: str) -> int:
        return int(self.scalar("<I", what))

    def u64(self, what: str) -> int:
        return int(self.scalar("<Q", what))

    def raw_string(self, what: str) -> bytes:
        length = self.u64(f"the length of {what}")
        start = self.take(length, what)
        return bytes(self.data[start : start + length])

    def text(self, what: str) -> str:
        raw = self.raw_string(what)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise ClmError(f"{what} is not valid UTF-8") from None


def read_header(path: str | Path) -> GgufHeader:
    """Parse the header of the GGUF at `path`; ClmError naming the file and the first problem."""
    path = Path(path)
    if not path.exists():
        raise ClmError(f"{path}: no such file")
    if not path.is_file():
        raise ClmError(f"{path}: not a file")
    try:
        with path.open("rb") as handle:
            size = path.stat().st_size
            if size < 4 or handle.read(4) != GGUF_MAGIC:
                raise ClmError("not a GGUF file (wrong magic bytes)")
            with mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as data:
                return _parse(path, _Cursor(data, size))
    except ClmError as error:
        message = str(error)
        raise ClmError(message if message.startswith(f"{path}:") else f"{path}: {message}") from None
    except OSError as error:
        raise ClmError(f"{path}: cannot read it ({error.strerror or error})") from None


def _parse(path: Path, cursor: _Cursor) -> GgufHeader:
    cursor.take(4, "the magic")
    version = cursor.u32("the version")
    if version not in SUPPORTED_VERSIONS:
        raise ClmError(f"unsupported GGUF version {version} (supported: 2, 3)")
    n_tensors = cursor.u64("the tensor count")
    n_kv = cursor.u64("the metadata count")
    if n_kv > cursor.left // _MIN_KV_BYTES:
        raise ClmError(f"the header claims {n_kv} metadata entries, more than the file can hold")
    if n_tensors > cursor.left // _MIN_TENSOR_INFO_BYTES:
        raise ClmError(f"the header claims {n_tensors} tensors, more than the file can hold")

    values: dict[str, Value] = {}
    types: dict[str, tuple[GGUFValueType, GGUFValueType | None]] = {}
    strings = StringArrayCache(path, cursor.size)
    for index in range(n_kv):
        key = cursor.text(f"metadata key #{index}")
        if key in values:
            raise ClmError(f"metadata key {key} appears twice")
        values[key], types[key] = _read_value(cursor, key, strings)
    strings.save()

    alignment = _alignment(values, types)
    tensors = [_read_tensor_info(cursor, index) for index in range(n_tensors)]
    data_offset = -(-cursor.position // alignment) * alignment
    return GgufHeader(
        path=path,
        file_size=cursor.size,
        version=version,
        values=values,
        types=types,
        tensors=_place_tensors(tensors, data_offset, alignment, cursor.size),
        alignment=alignment,
        data_offset=data_offset,
    )


def _value_type(cursor: _Cursor, what: str) -> GGUFValueType:
    code = cursor.u32(f"the type of {what}")
    try:
        return GGUFValueType(code)
    except ValueError:
        raise ClmError(f"{what} has an unknown value type {code}") from None


def _read_value(
    cursor: _Cursor, key: str, strings: StringArrayCache
) -> tuple[Value, tuple[GGUFValueType, GGUFValueType | None]]:
    what = f"metadata key {key}"
    kind = _value_type(cursor, what)
    if kind == GGUFValueType.STRING:
        return cursor.text(f"the value of {key}"), (kind, None)
    if kind != GGUFValueType.ARRAY:
        value = cursor.scalar(_SCALAR_FORMATS[kind], f"the value of {key}")
        return (bool(value) if kind == GGUFValueType.BOOL else value), (kind, None)

    item_kind = _value_type(cursor, f"the items of {key}")
    count = cursor.u64(f"the length of {key}")
    if item_kind == GGUFValueType.ARRAY:
        raise ClmError(f"{what} is an array of arrays, which llama.cpp does not read")
    item_size = 8 if item_kind == GGUFValueType.STRING else struct.calcsize(_SCALAR_FORMATS[item_kind])
    if count > cursor.left // item_size:
        raise ClmError(f"{what} claims {count} items, more than the file can hold")
    if item_kind == GGUFValueType.STRING:
        return _skip_strings(cursor, key, count, strings), (kind, item_kind)
    start = cursor.take(count * item_size, what)
    array = np.frombuffer(cursor.data, dtype=_ARRAY_DTYPES[item_kind], count=count, offset=start).copy()
    return (array.astype(bool) if item_kind == GGUFValueType.BOOL else array), (kind, item_kind)


def _skip_strings(cursor: _Cursor, key: str, count: int, strings: StringArrayCache) -> StringArray:
    """Walk a string array without keeping its items (a vocabulary is not turned into Python
    objects), checking each is UTF-8: llama.cpp aborts on a token that is not.

    A vocabulary has 50k to 250k items, so the loop is kept tight, and a walk of the same bytes
    is done once (gguf_string_cache.py): the items are checked in one decode, joined by NUL
    bytes, which no UTF-8 sequence can span."""
    start = cursor.position
    known = strings.lookup(cursor.data, start, count)
    if known is not None:
        cursor.position, distinct = known
        return StringArray(count, start, distinct)
    data, size, position = cursor.data, cursor.size, cursor.position
    unpack = struct.Struct("<Q").unpack_from
    items: list[memoryview] = []
    with memoryview(data) as view:
        try:
            for item in range(count):
                if size - position < 8:
                    raise ClmError(f"truncated or corrupt GGUF: the length of {key}[{item}] is past the end")
                (length,) = unpack(data, position)
                position += 8
                if length > size - position:
                    left = size - position
                    raise ClmError(
                        f"truncated or corrupt GGUF: {key}[{item}] needs {length} bytes, {left} left"
                    )
                items.append(view[position : position + length])
                position += length
            joined = b"\0".join(items)
        finally:
            for piece in items:  # the file's mapping cannot close while views of it exist
                piece.release()
    cursor.position = position
    try:
        joined.decode("utf-8")
    except UnicodeDecodeError:
        raise ClmError(f"{key}[{_first_invalid_item(data, start, count)}] is not valid UTF-8") from None
    pieces = joined.split(b"\0")
    if len(pieces) != count:  # some item holds a NUL byte itself (legal, if rare): count them apart
        pieces = [bytes(data[begin : begin + length]) for begin, length in _item_spans(data, start, count)]
    distinct = len(set(pieces))
    strings.remember(data, start, count, position, distinct)
    return StringArray(count, start, distinct)


def _item_spans(data: mmap.mmap, position: int, count: int) -> Iterator[tuple[int, int]]:
    """(start, length) of each item of a bounds-checked string array."""
    for _ in range(count):
        (length,) = struct.unpack_from("<Q", data, position)
        yield position + 8, length
        position += 8 + length


def _first_invalid_item(data: mmap.mmap, position: int, count: int) -> int:
    """Index of the first item of a (bounds-checked) string array that is not UTF-8, else -1."""
    for item, (begin, length) in enumerate(_item_spans(data, position, count)):
        try:
            data[begin : begin + length].decode("utf-8")
        except UnicodeDecodeError:
            return item
    return -1


def _alignment(values: dict[str, Value], types: dict[str, tuple[GGUFValueType, GGUFValueType | None]]) -> int:
    if ALIGNMENT_KEY not in values:
        return DEFAULT_ALIGNMENT
    alignment = values[ALIGNMENT_KEY]
    if types[ALIGNMENT_KEY][0] != GGUFValueType.UINT32:
        raise ClmError(f"{ALIGNMENT_KEY} must be a uint32, not {types[ALIGNMENT_KEY][0].name}")
    if alignment <= 0 or alignment & (alignment - 1):
        raise ClmError(f"{ALIGNMENT_KEY} is {alignment}, not a power of two")
    return int(alignment)


def _read_tensor_info(cursor: _Cursor, index: int) -> tuple[str, tuple[int, ...], GGMLQuantizationType, int]:
    name = cursor.text(f"the name of tensor #{index}")
    if not name or len(name.encode()) > MAX_TENSOR_NAME:
        raise ClmError(f"tensor #{index} has a name of {len(name.encode())} bytes (1 to {MAX_TENSOR_NAME})")
    n_dims = cursor.u32(f"the dimension count of tensor {name}")
    if not 1 <= n_dims <= MAX_DIMS:
        raise ClmError(f"tensor {name} has {n_dims} dimensions (1 to {MAX_DIMS})")
    ne = tuple(cursor.u64(f"the shape of tensor {name}") for _ in range(n_dims))
    code = cursor.u32(f"the type of tensor {name}")
    try:
        ggml_type = GGMLQuantizationType(code)
        block_size, _ = GGML_QUANT_SIZES[ggml_type]
    except (ValueError, KeyError):
        raise ClmError(f"tensor {name} has an unknown type {code}") from None
    if any(n < 1 for n in ne):
        raise ClmError(f"tensor {name} has an empty shape {list(ne)}")
    if ne[0] % block_size:
        raise ClmError(
            f"tensor {name}: its row of {ne[0]} values is not a whole number of {ggml_type.name} blocks"
        )
    offset = cursor.u64(f"the data offset of tensor {name}")
    return name, ne, ggml_type, offset


def _place_tensors(
    infos: list[tuple[str, tuple[int, ...], GGMLQuantizationType, int]],
    data_offset: int,
    alignment: int,
    file_size: int,
) -> tuple[TensorInfo, ...]:
    """TensorInfos with absolute offsets, after checking each lies aligned inside the file, alone."""
    tensors: list[TensorInfo] = []
    seen: set[str] = set()
    for name, ne, ggml_type, offset in infos:
        if name in seen:
            raise ClmError(f"tensor {name} appears twice")
        seen.add(name)
        block_size, type_size = GGML_QUANT_SIZES[ggml_type]
        n_bytes = math.prod(ne) // block_size * type_size
        if offset % alignment:
            raise ClmError(
                f"tensor {name}: data offset {offset} is not a multiple of the alignment {alignment}"
            )
        end = data_offset + offset + n_bytes
        if end > file_size:
            raise ClmError(f"truncated GGUF: tensor {name} ends at byte {end}, the file has {file_size}")
        tensors.append(TensorInfo(name, ne, ggml_type, data_offset + offset, n_bytes))
    ordered = sorted(tensors, key=lambda t: t.offset)
    for before, after in zip(ordered, ordered[1:], strict=False):
        if after.offset < before.offset + before.n_bytes:
            raise ClmError(f"tensors {before.name} and {after.name} overlap in the file")
    return tuple(tensors)
