"""clm-local: alignment control (CLM, arXiv 2503.04346) in one GGUF file, run by a patched llama.cpp.

`clm_local.load(path)` gives a ClmModel; `model.logits(token_ids, alpha=0.8, mode="logits")`
returns the blended logits `[len(token_ids), n_vocab]`; `model.info` describes the file;
`clm_local.chat.chat(model, messages, alpha=0.8)` streams an answer (and clm_local.chat has the
multi-turn session);
`clm_local.serve(path)` serves it over HTTP with OpenAI's API (clm_local.server, extra `serve`).
"""

from clm_local.errors import ClmError
from clm_local.runtime.model import ClmModel, ModelInfo, load

__all__ = ["ClmError", "ClmModel", "ModelInfo", "load", "serve"]
__version__ = "0.1.0"


def serve(model: str | None = None, **settings: object) -> None:
    """Serve `model` over HTTP until SIGINT/SIGTERM; see clm_local.server.serve for the settings."""
    from clm_local.server import serve as run_server  # needs the serve extra: imported on use

    run_server(model, **settings)  # type: ignore[arg-type]
