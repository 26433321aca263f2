"""GGUF in and out for the converters: validated reading, byte-exact copying, atomic writing.

Files are opened with clm_local.gguf.file.open_gguf (shared with the runtime), which turns a
missing, truncated or corrupt file into one ClmError line.

Every converter builds the same two lists and hands them to `write_gguf`:

- `MetadataEntry`s: key/value pairs. `copy_metadata` turns a source file's pairs into entries that
  re-encode to exactly the source bytes (strings stay raw bytes, numbers keep their GGUF type).
- `OutputTensor`s: a name, a ggml shape and type, and the bytes to write (or a function that makes
  them, so that a large model is converted one tensor at a time). `copy_tensor` wraps a tensor of
  a source file: its bytes are the source's own, memory-mapped, never decoded.

`write_gguf` writes through gguf-py's GGUFWriter into a temporary file next to the output and
renames it into place only once everything is on disk: a failed or interrupted run leaves no
partial output and never touches an existing file.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gguf
import numpy as np
from gguf import GGMLQuantizationType, GGUFValueType

from clm_local.errors import ClmError
from clm_local.files import atomic_file, progress_bar
from clm_local.gguf.file import field_value

# Below this many bytes a progress bar would only flicker.

_ALIGNMENT_KEY = gguf.Keys.General.ALIGNMENT
_ARCHITECTURE_KEY = gguf.Keys.General.ARCHITECTURE


@dataclass(frozen=True)
class MetadataEntry:
    """One key/value pair to write. Strings may be `bytes` (copied verbatim) or `str`."""

    key: str
    value: Any
    type: GGUFValueType
    sub_type: GGUFValueType | None = None  # the element type of an ARRAY


@dataclass(frozen=True)
class OutputTensor:
    """One tensor to write.

    `ne` is the ggml shape (innermost dimension first, as GGUF tensor infos and GGUFReader's
    `shape` have it); `data` gives the bytes in the file's encoding of `ggml_type`.
    """

    name: str
    ne: tuple[int, ...]
    ggml_type: GGMLQuantizationType
    data: np.ndarray | Callable[[], np.ndarray]

    @property
    def n_elements(self) -> int:
        return int(np.prod(self.ne, dtype=np.int64))

    @property
    def nbytes(self) -> int:
        block_size, type_size = gguf.GGML_QUANT_SIZES[self.ggml_type]
        return self.n_elements // block_size * type_size

    def materialize(self) -> np.ndarray:
        return self.data() if callable(self.data) else self.data


# --- from source files to entries -----------------------------------------------------------


def require_value(reader: gguf.GGUFReader, key: str, path: Path) -> Any:
    """The value of `key`; a ClmError naming the file when it is missing."""
    value = field_value(reader, key)
    if value is None:
        raise ClmError(f"{path} has no {key} key")
    return value


def copy_metadata(reader: gguf.GGUFReader, replace: dict[str, MetadataEntry]) -> list[MetadataEntry]:
    """The source's key/value pairs in their order, with the keys of `replace` swapped in place.

    Skipped: the GGUF.* pseudo-fields of the header (not metadata) and general.architecture
    (`write_gguf` writes it first). An empty array is dropped with a warning: GGUFWriter cannot
    encode one and no loader gives it a meaning.
    """
    entries = []
    for field in reader.fields.values():
        if field.name.startswith("GGUF.") or field.name == _ARCHITECTURE_KEY:
            continue
        if field.name in replace:
            entries.append(replace[field.name])
            continue
        entry = _entry_from_field(field)
        if entry is None:
            print(f"warning: dropping empty array {field.name}", file=sys.stderr)
            continue
        entries.append(entry)
    return entries


def _entry_from_field(field: gguf.ReaderField) -> MetadataEntry | None:
    vtype = field.types[0]
    if vtype != GGUFValueType.ARRAY:
        return MetadataEntry(field.name, _raw_item(field.parts[field.data[0]], vtype), vtype)
    if not field.data:
        return None
    sub_type = field.types[1]
    if sub_type == GGUFValueType.ARRAY:
        raise ClmError(f"metadata key {field.name} is a nested array, which this converter cannot copy")
    values = [_raw_item(field.parts[index], sub_type) for index in field.data]
    return MetadataEntry(field.name, values, vtype, sub_type)


def _raw_item(part: np.ndarray, vtype: GGUFValueType) -> Any:
    # Strings stay bytes so that nothing is decoded and re-encoded; numbers become Python numbers,
    # which GGUFWriter packs back into the same GGUF type bit for bit.
    return part.tobytes() if vtype == GGUFValueType.STRING else part[0].item()


def entries_from_writer(writer: gguf.GGUFWriter) -> list[MetadataEntry]:
    """The pairs added to a GGUFWriter that serves as a recorder (created without a path).

    gguf-py's add_* methods know each standard key's name and type; recording through them and
    writing with `write_gguf` keeps one writing path for every converter.
    """
    return [
        MetadataEntry(key, value.value, value.type, value.sub_type)
        for key, value in writer.kv_data[0].items()
        if key != _ARCHITECTURE_KEY
    ]


def copy_tensor(tensor: gguf.ReaderTensor, name: str | None = None) -> OutputTensor:
    """A source tensor to write unchanged (optionally renamed): same type, shape and bytes."""
    ne = tuple(int(n) for n in tensor.shape)
    return OutputTensor(name or tensor.name, ne, tensor.tensor_type, tensor.data)


# --- writing ----------------------------------------------------------------------------------


def write_gguf(
    out: Path,
    arch: str,
    metadata: Sequence[MetadataEntry],
    tensors: Sequence[OutputTensor],
    *,
    force: bool,
) -> None:
    """Write a GGUF file atomically: header, key/value pairs, tensor infos, then tensor data.

    `metadata` must not contain general.architecture (GGUFWriter writes it first from `arch`).
    A general.alignment entry sets the data alignment, as it does for readers.
    """
    with atomic_output(out, force=force) as temp_path:
        writer = gguf.GGUFWriter(temp_path, arch)
        try:
            _write(writer, metadata, tensors, out.name)
        finally:
            writer.close()


def _write(
    writer: gguf.GGUFWriter, metadata: Sequence[MetadataEntry], tensors: Sequence[OutputTensor], label: str
) -> None:
    for entry in metadata:
        if entry.key == _ARCHITECTURE_KEY:
            raise ValueError("general.architecture is written from `arch`")
        if entry.key == _ALIGNMENT_KEY:
            writer.data_alignment = int(entry.value)
        writer.add_key_value(entry.key, entry.value, entry.type, entry.sub_type)
    for tensor in tensors:
        # GGUFWriter takes the numpy-order shape; with a non-uint8 dtype it keeps it as given.
        numpy_shape = tuple(reversed(tensor.ne))
        writer.add_tensor_info(
            tensor.name, numpy_shape, np.dtype(np.float32), tensor.nbytes, raw_dtype=tensor.ggml_type
        )
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    with progress_bar(sum(tensor.nbytes for tensor in tensors), f"writing {label}") as bar:
        for tensor in tensors:
            writer.write_tensor_data(tensor.materialize())  # checks the size against the tensor info
            bar.update(tensor.nbytes)


@contextlib.contextmanager
def atomic_output(out: Path, *, force: bool) -> Iterator[Path]:
    """Yield a temporary path next to `out`; rename it to `out` only if the body succeeds.

    clm_local.files.atomic_file does the writing (a hidden temporary file in the output's folder,
    fsynced, renamed over `out`, removed on any failure); this adds the converter's checks of
    `out`, one-line errors for an unwritable folder or a full disk, and `kill` unwinding like
    Ctrl-C so that a multi-GB temporary file is not left behind.
    """
    if out.is_dir():
        raise ClmError(f"{out} is a folder; give the path of the .gguf file to write")
    if out.exists() and not force:
        raise ClmError(f"{out} already exists (use --force to replace it)")
    if not out.parent.is_dir():
        raise ClmError(f"folder {out.parent} does not exist")
    try:
        with _sigterm_as_interrupt(), atomic_file(out, durable=True) as temp_path:
            try:
                temp_path.touch()  # fail here, before any work, where the folder is not writable
            except OSError as error:
                raise ClmError(f"cannot write in {out.parent}: {error.strerror or error}") from None
            yield temp_path
    except OSError as error:  # a full disk, most likely
        raise ClmError(f"writing {out} failed: {error.strerror or error}") from None


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """Let `kill` (SIGTERM) unwind like Ctrl-C, so a multi-GB temporary file is not left behind."""
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers can only be set from the main thread
        return

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
