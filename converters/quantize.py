"""`--quantize TYPE`: convert to a temporary file, then run llama.cpp's own quantizer on it.

llama.cpp's `llama_model_quantize` (reached through the llama-cpp-python bindings of the patched
runtime) picks per-tensor types the way `llama-quantize` does (Q4_K_M mixes Q4_K and Q6_K, ...)
and copies every key/value pair, the clm.* keys included. Doing it in Python would mean
re-implementing those choices. Requantizing already-quantized tensors is refused, as llama.cpp's
own tool refuses it by default: it compounds the quantization error.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

from clm_local.errors import ClmError

from .gguf_io import atomic_output

_FTYPE_PREFIXES = ("LLAMA_FTYPE_MOSTLY_", "LLAMA_FTYPE_ALL_")


def convert_then_quantize(write: Callable[[Path], None], out: Path, qtype: str, *, force: bool) -> None:
    """Call `write(path)` to make the unquantized file, quantize it into `out`, drop the former."""
    from clm_local.runtime import library

    bindings = library.llama()
    ftype = _ftype(bindings, qtype)
    with atomic_output(out, force=force) as quantized, _temporary_gguf(out) as unquantized:
        write(unquantized)
        params = bindings.llama_model_quantize_default_params()
        params.ftype = ftype
        params.nthread = os.cpu_count() or 1
        status = bindings.llama_model_quantize(
            str(unquantized).encode(), str(quantized).encode(), ctypes.byref(params)
        )
        if status != 0:
            raise ClmError(f"llama.cpp could not quantize to {qtype}: {library.last_log_error()}")


def _ftype(bindings: object, name: str) -> int:
    """The llama_ftype value for a type name such as "Q4_K_M" (case-insensitive)."""
    for prefix in _FTYPE_PREFIXES:
        value = getattr(bindings, prefix + name.upper(), None)
        if value is not None:
            return int(value)
    known = sorted(
        n.removeprefix(p)
        for n in dir(bindings)
        for p in _FTYPE_PREFIXES
        if n.startswith(p) and "GUESSED" not in n
    )
    raise ClmError(f"unknown quantization type {name!r}; llama.cpp offers {', '.join(known)}")


@contextlib.contextmanager
def _temporary_gguf(out: Path):
    """A scratch path next to `out` (same disk, so no surprise when space runs out), always removed."""
    descriptor, name = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".unquantized")
    os.close(descriptor)
    path = Path(name)
    try:
        yield path
    finally:
        path.unlink(missing_ok=True)
