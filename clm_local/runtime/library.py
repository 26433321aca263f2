"""The patched llama.cpp, as seen from Python: load it, check the hook, bind the new C functions.

llama-cpp-python already binds the stock API in `llama_cpp.llama_cpp`; the four functions that
`llama-cpp-pre-layer.patch` adds are bound here on its ctypes library (`llama_cpp.llama_cpp._lib`).
A stock build (or one of an older patch) lacks them, and we stop with the one command that fixes it.

llama.cpp's log goes to a small buffer instead of the terminal, so that a failure can be reported
as one line with llama.cpp's own reason; set CLM_LOCAL_VERBOSE=1 to see the whole log.
"""

from __future__ import annotations

import ctypes
import json
import os
import sys
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from types import ModuleType

from clm_local.errors import ClmError

INSTALL_HINT = "run `clm-local runtime install` (add `--backend metal` or `--backend cuda` for a GPU build)"

_recent_log: deque[str] = deque(maxlen=50)
_recent_errors: deque[str] = deque(maxlen=10)  # error-level lines, llama_decode's summary left out
GGML_LOG_LEVEL_ERROR = 4
DECODE_SUMMARY = "failed to decode, ret ="  # llama_decode's own line, after the one with the cause


@dataclass(frozen=True)
class RuntimeStatus:
    """What `clm-local runtime status` reports."""

    llama_cpp_python: str | None
    library_path: str | None
    has_hook: bool
    backend: str | None
    patch_sha256: str | None
    gpu_offload: bool  # a local GPU llama.cpp can offload layers to
    rpc: bool  # llama.cpp's RPC backend is built in (`--rpc`)


def _import_llama_cpp() -> ModuleType:
    try:
        import llama_cpp.llama_cpp as bindings
    except (ImportError, OSError) as error:
        raise ClmError(f"the llama.cpp runtime is not installed ({error}): {INSTALL_HINT}") from None
    return bindings


def _has_hook(lib: ctypes.CDLL) -> bool:
    try:
        lib.llama_set_pre_layer_alpha  # noqa: B018 - the symbol lookup is the check
        lib.llama_set_pre_layer_logit_mix  # noqa: B018 - added by a later version of the patch
        lib.llama_n_ubatch_computed  # noqa: B018 - added by a later version of the patch
    except AttributeError:
        return False
    return True


@cache
def llama() -> ModuleType:
    """The llama_cpp bindings, after checking the pre-layer hook and binding its functions."""
    bindings = _import_llama_cpp()
    lib = bindings._lib
    if not _has_hook(lib):
        raise ClmError(
            f"the installed llama.cpp lacks the CLM pre-layer hook (stock, or an older patch): {INSTALL_HINT}"
        )

    lib.llama_model_n_pre_layer.argtypes = [bindings.llama_model_p_ctypes]
    lib.llama_model_n_pre_layer.restype = ctypes.c_int32
    lib.llama_set_pre_layer_alpha.argtypes = [bindings.llama_context_p_ctypes, ctypes.c_int32, ctypes.c_float]
    lib.llama_set_pre_layer_alpha.restype = ctypes.c_int32
    lib.llama_get_pre_layer_alpha.argtypes = [bindings.llama_context_p_ctypes, ctypes.c_int32]
    lib.llama_get_pre_layer_alpha.restype = ctypes.c_float
    lib.llama_set_pre_layer_logit_mix.argtypes = [
        bindings.llama_context_p_ctypes,
        ctypes.c_int32,
        ctypes.c_int32,
        ctypes.c_float,
    ]
    lib.llama_set_pre_layer_logit_mix.restype = ctypes.c_int32
    lib.llama_n_ubatch_computed.argtypes = [bindings.llama_context_p_ctypes]
    lib.llama_n_ubatch_computed.restype = ctypes.c_int64

    _capture_log(bindings)
    bindings.llama_backend_init()
    return bindings


def _capture_log(bindings: ModuleType) -> None:
    verbose = os.environ.get("CLM_LOCAL_VERBOSE", "") not in ("", "0")

    @bindings.llama_log_callback
    def on_log(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
        line = text.decode("utf-8", errors="replace")
        if line.strip():
            _recent_log.append(line.strip())
            if level == GGML_LOG_LEVEL_ERROR and DECODE_SUMMARY not in line:
                _recent_errors.append(line.strip())
        if verbose:
            print(line, end="", file=sys.stderr)

    # keep the callback alive as long as the library is
    _capture_log.callback = on_log  # type: ignore[attr-defined]
    bindings.llama_log_set(on_log, ctypes.c_void_p(0))


def last_log_error() -> str:
    """llama.cpp's most recent error line, to explain a failed call in one line."""
    if _recent_errors:
        return _recent_errors[-1]
    for line in reversed(_recent_log):
        if "error" in line.lower() or "failed" in line.lower():
            return line
    return _recent_log[-1] if _recent_log else "no message from llama.cpp"


def n_pre_layer(model: ctypes.c_void_p) -> int:
    return int(llama()._lib.llama_model_n_pre_layer(model))


def set_pre_layer_alpha(context: ctypes.c_void_p, seq_id: int, alpha: float) -> None:
    if llama()._lib.llama_set_pre_layer_alpha(context, seq_id, alpha) != 0:
        raise ClmError(f"llama.cpp refused alpha {alpha} for sequence {seq_id}")


def get_pre_layer_alpha(context: ctypes.c_void_p, seq_id: int) -> float:
    return float(llama()._lib.llama_get_pre_layer_alpha(context, seq_id))


def set_logit_mix(context: ctypes.c_void_p, seq_id: int, partner: int, alpha: float) -> bool:
    """Pair two sequences so that llama.cpp mixes their logits before the head (partner -1: unpair).

    False where llama.cpp cannot (a head that is not linear, e.g. Gemma 2's soft-capping): the
    caller then mixes the two rows of logits itself.
    """
    return llama()._lib.llama_set_pre_layer_logit_mix(context, seq_id, partner, alpha) == 0


def n_ubatch_computed(context: ctypes.c_void_p) -> int:
    """The forward passes (ubatches) llama.cpp has computed on this context since its creation."""
    return int(llama()._lib.llama_n_ubatch_computed(context))


# ggml's backend registry, for what llama.h does not say: which devices are local GPUs, and RPC.
GGML_BACKEND_DEVICE_TYPE_GPU = 1
GGML_BACKEND_DEVICE_TYPE_IGPU = 2
ABORT_CALLBACK = ctypes.CFUNCTYPE(None, ctypes.c_char_p)  # ggml_abort_callback_t
RPC_ADD_SERVER = ctypes.CFUNCTYPE(ctypes.c_void_p, ctypes.c_char_p)  # ggml_backend_rpc_add_server


@cache
def ggml() -> ctypes.CDLL:
    """libggml as loaded by llama_cpp, with the registry functions clm-local uses typed."""
    llama()  # the hook check, and llama_backend_init
    from llama_cpp._ggml import libggml

    signatures = {
        "ggml_backend_dev_count": ([], ctypes.c_size_t),
        "ggml_backend_dev_get": ([ctypes.c_size_t], ctypes.c_void_p),
        "ggml_backend_dev_type": ([ctypes.c_void_p], ctypes.c_int),
        "ggml_backend_dev_backend_reg": ([ctypes.c_void_p], ctypes.c_void_p),
        "ggml_backend_reg_by_name": ([ctypes.c_char_p], ctypes.c_void_p),
        "ggml_backend_reg_get_proc_address": ([ctypes.c_void_p, ctypes.c_char_p], ctypes.c_void_p),
        "ggml_backend_reg_dev_count": ([ctypes.c_void_p], ctypes.c_size_t),
        "ggml_backend_reg_dev_get": ([ctypes.c_void_p, ctypes.c_size_t], ctypes.c_void_p),
        "ggml_set_abort_callback": ([ABORT_CALLBACK], ABORT_CALLBACK),
    }
    for name, (argtypes, restype) in signatures.items():
        function = getattr(libggml, name)
        function.argtypes, function.restype = argtypes, restype
    return libggml


def local_gpu_devices() -> list[int]:
    """This machine's GPUs as llama.cpp picks them by default: the discrete ones, else the
    integrated ones (RPC devices are never in the registry: clm-local does not register them)."""
    lib = ggml()
    devices = [lib.ggml_backend_dev_get(i) for i in range(lib.ggml_backend_dev_count())]
    gpus = [d for d in devices if lib.ggml_backend_dev_type(d) == GGML_BACKEND_DEVICE_TYPE_GPU]
    return gpus or [d for d in devices if lib.ggml_backend_dev_type(d) == GGML_BACKEND_DEVICE_TYPE_IGPU]


def supports_rpc() -> bool:
    return bool(ggml().ggml_backend_reg_by_name(b"RPC"))


def rpc_add_server_function() -> Callable[[bytes], int | None]:
    """ggml_backend_rpc_add_server: connects to one server and returns its registry (one per endpoint)."""
    lib = ggml()
    name = b"ggml_backend_rpc_add_server"
    address = lib.ggml_backend_reg_get_proc_address(lib.ggml_backend_reg_by_name(b"RPC"), name)
    if not address:
        raise ClmError(f"this llama.cpp build's RPC backend lacks {name.decode()}: {INSTALL_HINT}")
    return RPC_ADD_SERVER(address)


def status() -> RuntimeStatus:
    """Describe the installed runtime without raising: for `clm-local runtime status`."""
    try:
        bindings = _import_llama_cpp()
    except ClmError:
        return RuntimeStatus(None, None, False, None, None, False, False)
    import llama_cpp

    package_dir = Path(llama_cpp.__file__).parent
    build_info_file = package_dir / "clm_local_build.json"
    build_info = json.loads(build_info_file.read_text()) if build_info_file.exists() else {}
    has_hook = _has_hook(bindings._lib)
    return RuntimeStatus(
        llama_cpp_python=llama_cpp.__version__,
        library_path=getattr(bindings._lib, "_name", None),
        has_hook=has_hook,
        backend=build_info.get("backend"),
        patch_sha256=build_info.get("patch_sha256"),
        gpu_offload=bool(has_hook and local_gpu_devices()),
        rpc=bool(bindings.llama_supports_rpc()),
    )
