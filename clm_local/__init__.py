"""clm-local: alignment control (CLM, arXiv 2503.04346) in one GGUF file, run by a patched llama.cpp.

`clm_local.load(path)` gives a ClmModel; `model.logits(token_ids, alpha=0.8, mode="logits")`
returns the blended logits `[len(token_ids), n_vocab]`; `model.info` describes the file;
`model.chat(messages, alpha=0.8)` streams an answer (clm_local.chat has the multi-turn session).
"""

from clm_local.errors import ClmError
from clm_local.runtime.model import ClmModel, ModelInfo, load

__all__ = ["ClmError", "ClmModel", "ModelInfo", "load"]
__version__ = "0.1.0"
