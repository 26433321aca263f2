"""gguf-py's format constants (value types, tensor types and their block sizes), imported without
the rest of the gguf package.

Why: `import gguf` runs the package's __init__, which loads its writer, reader, vocabulary tools
(sentencepiece) and metadata helpers (yaml): about 60 ms of the half second a one-shot answer
takes from a cold process, for three tables the runtime's header reader needs. Where gguf is
already imported its own module is used; otherwise this is a private copy of the same file, so
compare its enums with gguf's by value (they are IntEnums: `==` and dict keys work), never by
identity.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

from clm_local.errors import ClmError


def _gguf_constants() -> ModuleType:
    if "gguf" in sys.modules:
        return sys.modules["gguf"].constants
    package = importlib.util.find_spec("gguf")  # finds the package without running its __init__
    if package is None or not package.submodule_search_locations:
        raise ClmError("the gguf package is not installed (pip install gguf)")
    path = Path(next(iter(package.submodule_search_locations))) / "constants.py"
    spec = importlib.util.spec_from_file_location("clm_local.gguf._gguf_constants", path)
    if spec is None or spec.loader is None:
        raise ClmError(f"the gguf package has no constants module at {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_constants = _gguf_constants()
GGML_QUANT_SIZES: dict = _constants.GGML_QUANT_SIZES
GGMLQuantizationType = _constants.GGMLQuantizationType
GGUFValueType = _constants.GGUFValueType
