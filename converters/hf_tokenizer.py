"""A Hugging Face BPE tokenizer as llama.cpp's GGUF vocabulary (`tokenizer.ggml.*`).

This follows llama.cpp's convert_hf_to_gguf.py (`_set_vocab_gpt2` and `get_vocab_base`) so that a
folder converted here tokenizes exactly like the same folder converted there:
- tokens in id order, padded to the model's vocab_size, each typed NORMAL, CONTROL (special added
  tokens) or USER_DEFINED (other added tokens, pre-normalized as llama.cpp expects);
- the pre-tokenizer named by fingerprint (see pre_tokenizers.py);
- merges, special token ids and the chat template through gguf-py's SpecialVocab.
One deliberate difference: whether to add BOS/EOS is measured on the Hugging Face tokenizer (does
encoding a text add them?) instead of read from config hints, so both sides agree by construction.

Only byte-level BPE tokenizers (Llama 3, Qwen2, SmolLM2, DeepSeek-R1-Distill) are handled; a
SentencePiece model gets a clear refusal.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import gguf

from clm_local.errors import ClmError

from .pre_tokenizers import CHECK_TEXT, fingerprint, pre_tokenizer_name

DEFAULT_PRE_TOKENIZER = "default"


def add_tokenizer(writer: gguf.GGUFWriter, folder: Path, arch: str, n_vocab: int) -> None:
    """Add the folder's tokenizer to `writer` (tokens, types, pre-tokenizer, merges, specials)."""
    tokenizer = _load(folder)
    add_prefix_space = _tokenizer_config(folder).get("add_prefix_space")
    if arch == "llama" and add_prefix_space is not None:  # as llama.cpp's LlamaModel.set_vocab does
        writer.add_add_space_prefix(add_prefix_space)
    tokens, token_types = _vocabulary(tokenizer, n_vocab)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(_pre_tokenizer(tokenizer, folder))
    writer.add_token_list(tokens)
    writer.add_token_types(token_types)
    special = gguf.SpecialVocab(folder, load_merges=True, n_vocab=len(tokens))
    if not special.merges:
        raise ClmError(f"{folder}: the tokenizer has no BPE merges")
    special.add_special_token.update(_added_specials(tokenizer))
    special.add_to_gguf(writer, quiet=True)


def _load(folder: Path):  # -> transformers.PreTrainedTokenizerFast
    try:
        from transformers import AutoTokenizer
    except ImportError:
        raise ClmError(
            "converting a Hugging Face folder needs transformers: pip install 'clm-local[train]'"
        ) from None
    if not (folder / "tokenizer.json").is_file():
        raise ClmError(f"{folder} has no tokenizer.json (only byte-level BPE tokenizers are supported)")
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder)
    except Exception as error:  # transformers raises many types for a broken tokenizer folder
        raise ClmError(f"{folder}: cannot load the tokenizer ({type(error).__name__}: {error})") from None
    model_type = json.loads(tokenizer.backend_tokenizer.to_str())["model"]["type"]
    if model_type != "BPE":
        raise ClmError(f"{folder}: tokenizer model {model_type} is not supported (only byte-level BPE)")
    return tokenizer


def _tokenizer_config(folder: Path) -> dict:
    path = folder / "tokenizer_config.json"
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ClmError(f"{path} is not valid JSON ({error})") from None


def _vocabulary(tokenizer, n_vocab: int) -> tuple[list[str], list[int]]:
    """Tokens and their llama.cpp types, in id order (llama.cpp's get_vocab_base)."""
    vocab = tokenizer.get_vocab()
    if max(vocab.values()) >= n_vocab:
        raise ClmError(f"the tokenizer has ids up to {max(vocab.values())}, beyond vocab_size {n_vocab}")
    by_id = {token_id: token for token, token_id in vocab.items()}
    added = tokenizer.get_added_vocab()
    added_decoder = tokenizer.added_tokens_decoder
    tokens: list[str] = []
    token_types: list[int] = []
    for token_id in range(n_vocab):
        if token_id not in by_id:
            tokens.append(f"[PAD{token_id}]")
            token_types.append(gguf.TokenType.UNUSED)
            continue
        token = by_id[token_id]
        token_type = gguf.TokenType.NORMAL
        if token in added:
            # llama.cpp assumes CONTROL and USER_DEFINED tokens are already normalized.
            if not added_decoder[token_id].normalized:
                token = tokenizer.decode(tokenizer.encode(token, add_special_tokens=False))
            if added_decoder[token_id].special or _looks_special(token):
                token_type = gguf.TokenType.CONTROL
            else:
                token = token.replace("\u2581", " ")  # pre-normalize SentencePiece-style spaces
                token_type = gguf.TokenType.USER_DEFINED
        tokens.append(token)
        token_types.append(token_type)
    return tokens, token_types


def _looks_special(token: str) -> bool:
    """Added tokens some models forget to mark special (llama.cpp's does_token_look_special)."""
    return (
        token in ("<pad>", "<mask>", "<2mass>", "[@BOS@]")
        or (token.startswith("<|") and token.endswith("|>"))
        or (token.startswith("<\uff5c") and token.endswith("\uff5c>"))
        or (token.startswith("<unused") and token.endswith(">"))
    )


def _pre_tokenizer(tokenizer, folder: Path) -> str:
    ids = tokenizer.encode(CHECK_TEXT)
    name = pre_tokenizer_name(ids)
    if name is None:
        print(
            f"warning: {folder}: pre-tokenizer not recognised (fingerprint {fingerprint(ids)}); "
            f"writing '{DEFAULT_PRE_TOKENIZER}', so llama.cpp may split some texts differently",
            file=sys.stderr,
        )
        return DEFAULT_PRE_TOKENIZER
    return name


def _added_specials(tokenizer) -> dict[str, bool]:
    """Whether encoding adds BOS / EOS, observed on a sample text."""
    ids = tokenizer.encode("Hello")
    return {
        "bos": tokenizer.bos_token_id is not None and ids[0] == tokenizer.bos_token_id,
        "eos": tokenizer.eos_token_id is not None and ids[-1] == tokenizer.eos_token_id,
    }
