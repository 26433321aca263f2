"""Find, identify and load the base model: a Hugging Face folder or a single GGUF file.

A GGUF base is loaded dequantized through transformers (`from_pretrained(..., gguf_file=...)`),
tokenizer included, so the same file the runtime chats with can be trained on directly. The
architecture is read before any weights are loaded, so an unsupported model is refused at once.
The name `default` stands for the default model's base GGUF (default_model.base_model_path).

torch and transformers are imported by the loaders only: resolve_base and base_architecture are
part of the CLI's checks, which answer in a fraction of a second.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from clm_local.errors import ClmError
from clm_local.files import sha256_file
from clm_local.gguf.file import field_value, open_gguf
from clm_local.gguf.keys import GEMMA_NORM_ARCHITECTURES, HF_MODEL_TYPES, SUPPORTED_ARCHITECTURES

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

GGUF_MAGIC = b"GGUF"
DEFAULT_BASE = "default"  # the name that stands for the default model's base GGUF


@dataclass(frozen=True)
class BaseSource:
    """Where the base model lives: `kind` is "hf" (a folder) or "gguf" (one file)."""

    path: Path
    kind: str
    weight_files: tuple[Path, ...]


def resolve_base(path: str | Path) -> BaseSource:
    """Check that `path` is a model folder or a GGUF file, and list the files that hold its weights.

    `default` (when no file or folder of that name is here) is the default model's base GGUF,
    fetched on first use like the default model itself."""
    if str(path) == DEFAULT_BASE and not Path(path).exists():
        from clm_local import default_model

        path = default_model.base_model_path()
    path = Path(path).expanduser().resolve()
    if path.is_file():
        with path.open("rb") as handle:
            if handle.read(4) != GGUF_MAGIC:
                raise ClmError(f"{path} is neither a model folder nor a GGUF file")
        return BaseSource(path, "gguf", (path,))
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ClmError(f"{path} is not a Hugging Face model folder (no config.json)")
        weights = sorted(path.glob("*.safetensors")) or sorted(path.glob("*.bin"))
        if not weights:
            raise ClmError(f"{path} has a config.json but no weight files (*.safetensors)")
        return BaseSource(path, "hf", tuple(weights))
    raise ClmError(f"base model {path} does not exist")


def base_architecture(source: BaseSource) -> str:
    """The GGUF architecture name (`general.architecture`, or the one llama.cpp gives the HF
    `model_type`: Mistral is llama, Gemma 3's text model gemma3), refused unless supported."""
    if source.kind == "gguf":
        from gguf import GGUFReader

        try:
            field = GGUFReader(source.path).fields["general.architecture"]
        except (KeyError, ValueError) as error:
            raise ClmError(f"{source.path} is not a readable GGUF model ({error})") from None
        architecture = str(field.contents())
    else:
        try:
            model_type = str(json.loads((source.path / "config.json").read_text())["model_type"])
        except (KeyError, ValueError) as error:
            raise ClmError(f"{source.path / 'config.json'} has no readable model_type ({error})") from None
        architecture = HF_MODEL_TYPES.get(model_type, model_type)
    if architecture not in SUPPORTED_ARCHITECTURES:
        supported = ", ".join(SUPPORTED_ARCHITECTURES)
        raise ClmError(f"architecture '{architecture}' is not supported (supported: {supported})")
    return architecture


def base_identity(source: BaseSource) -> dict:
    """The base's identity for the manifest: its path and the sha256 of every weight file."""
    return {
        "path": str(source.path),
        "kind": source.kind,
        "files": [
            {"name": file.name, "size": file.stat().st_size, "sha256": sha256_file(file)}
            for file in source.weight_files
        ],
    }


def load_tokenizer(source: BaseSource) -> PreTrainedTokenizerBase:
    """The base's tokenizer (from the GGUF metadata for a GGUF base)."""
    from transformers import AutoTokenizer

    if source.kind == "gguf":
        # transformers merges tokenizer files lying next to the GGUF into the GGUF's own tokenizer;
        # pointing it at an empty folder with an absolute gguf_file keeps the file self-contained.
        with tempfile.TemporaryDirectory() as empty:
            tokenizer = AutoTokenizer.from_pretrained(empty, gguf_file=str(source.path))
    else:
        tokenizer = AutoTokenizer.from_pretrained(source.path)
    if tokenizer.pad_token_id is None:
        # Padding is masked out everywhere, so any id works; EOS is the usual choice.
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(source: BaseSource, dtype: torch.dtype, device: torch.device) -> PreTrainedModel:
    """The base model in `dtype` on `device`, in eval mode (no dropout: the policy and the DPO
    reference must be the same deterministic function apart from P). Gemma 2 runs with eager
    attention, the only implementation that applies its attention soft-capping, as llama.cpp does."""
    from transformers import AutoModelForCausalLM, GgufConfig

    attention = "eager" if base_architecture(source) == "gemma2" else None
    if source.kind == "gguf":
        # Dense weights on purpose: P is a trainable copy of block 0, and an exported checkpoint must
        # be an ordinary one (transformers would otherwise keep the blocks quantized where it has kernels).
        with tempfile.TemporaryDirectory() as empty:
            model = AutoModelForCausalLM.from_pretrained(
                empty,
                gguf_file=str(source.path),
                config=_gguf_config(source.path, empty),
                dtype=dtype,
                quantization_config=GgufConfig(dequantize=True),
                attn_implementation=attention,
            )
    else:
        model = AutoModelForCausalLM.from_pretrained(source.path, dtype=dtype, attn_implementation=attention)
    return model.to(device).eval()


def _gguf_config(path: Path, empty_folder: str):  # -> transformers.PretrainedConfig
    """transformers' config for a GGUF base, completed with what its GGUF reader leaves at defaults.

    transformers does not read `{arch}.attention.key_length` (Qwen3 and Gemma state a head size
    other than n_embd / n_head) and has no key for Gemma's query_pre_attn_scalar; llama.cpp
    scales Gemma's queries by 1/sqrt(head_dim) (every size but 27B, which CLM refuses), so the
    model trained here is the one llama.cpp runs.
    """
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(empty_folder, gguf_file=str(path))
    reader = open_gguf(path)
    arch = str(field_value(reader, "general.architecture"))
    key_length = field_value(reader, f"{arch}.attention.key_length")
    if key_length is not None and hasattr(config, "head_dim"):
        config.head_dim = int(key_length)
    if arch in GEMMA_NORM_ARCHITECTURES:
        config.query_pre_attn_scalar = config.head_dim
    return config
