"""Tiny random models of every supported family, made with transformers (no download), and the
files each conversion path makes of them. Used by test_families.py; it holds no tests.

Per family: a base Hugging Face folder; the expanded model (P inserted by the training code,
then moved away from the identity so that it matters); and GGUF files:
- `base.gguf` and `llama_cpp_expanded.gguf`: llama.cpp's own convert_hf_to_gguf.py on the two folders;
- `clm_a.gguf`: P grafted onto base.gguf (path a); `clm_b.gguf`: the expanded folder through the
  project's converter (path b); `clm_c.gguf`: the clm.* keys added to llama_cpp_expanded.gguf (path c);
- `plain_expanded.gguf`: clm_c.gguf without its clm.* keys, an ordinary file. It differs from
  llama_cpp_expanded.gguf only where llama.cpp's converter leaves per-block values to be derived
  from the block index (Gemma's sliding-window flags), which P's insertion shifts.
alpha 0 must equal base.gguf and alpha 1 plain_expanded.gguf, both loaded as ordinary files.

Sliding windows (Gemma) are shorter than the test prompt, and Gemma 3 has enough blocks for a
global one, so the per-block attention pattern is exercised.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
from dataclasses import dataclass
from pathlib import Path

import gguf
import numpy as np
import torch
import transformers
from clm_local.converters.convert import ConvertOptions, convert
from clm_local.converters.gguf_io import copy_metadata, copy_tensor, write_gguf
from test_convert_fixtures import write_checkpoint
from tiny_hf import PRE_LAYER_INPUTS, make_tiny_tokenizer

from clm_local.files import cache_dir
from clm_local.training.clm_block import insert_pre_layer, pre_layer_state

SLIDING_WINDOW = 4  # tokens; the test prompts are longer

_COMMON = dict(
    hidden_size=64,
    intermediate_size=128,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=256,
)
_GEMMA = dict(
    head_dim=16,
    query_pre_attn_scalar=16,
    sliding_window=SLIDING_WINDOW,
    hidden_activation="gelu_pytorch_tanh",
)

_GEMMA2 = dict(_GEMMA, attn_logit_softcapping=50.0, final_logit_softcapping=30.0)
_LLAMA3_ROPE = {
    "rope_type": "llama3",
    "rope_theta": 500000.0,
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 16,
}

# family -> (transformers config class, model class, config values beyond _COMMON, base blocks).
# Gemma 3 gets 6 blocks so that one is global (every 6th); Gemma 2 alternates from block 0 on.
# llama.cpp's llama graph has no sliding window (Mistral v0.2 and later have none either), and
# llama.cpp disables Phi-3's (its loader says so): those tiny models have none.
FAMILIES: dict[str, tuple[str, str, dict, int]] = {
    "llama": ("LlamaConfig", "LlamaForCausalLM", {}, 2),
    "llama3-rope": ("LlamaConfig", "LlamaForCausalLM", {"rope_parameters": _LLAMA3_ROPE}, 2),
    "mistral": ("MistralConfig", "MistralForCausalLM", {"sliding_window": None, "head_dim": 16}, 2),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", {}, 2),
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM", {"head_dim": 16}, 2),
    "gemma2": ("Gemma2Config", "Gemma2ForCausalLM", _GEMMA2, 2),
    "gemma3": ("Gemma3TextConfig", "Gemma3ForCausalLM", dict(_GEMMA, final_logit_softcapping=None), 6),
    "phi3": (
        "Phi3Config",
        "Phi3ForCausalLM",
        {"original_max_position_embeddings": 256, "sliding_window": None},
        2,
    ),
}


def gguf_architecture(family: str) -> str:
    """The GGUF architecture of a tiny family (llama3-rope and mistral are llama graphs)."""
    return {"llama3-rope": "llama", "mistral": "llama"}.get(family, family)


@dataclass(frozen=True)
class FamilyFiles:
    family: str
    base_folder: Path
    expanded_folder: Path
    files: dict[str, Path]  # base, plain_expanded, clm_a, clm_b, clm_c (those that could be made)

    def expanded_model(self) -> transformers.PreTrainedModel:
        return load_hf(self.expanded_folder)

    def base_model(self) -> transformers.PreTrainedModel:
        return load_hf(self.base_folder)


def load_hf(folder: Path) -> transformers.PreTrainedModel:
    # eager attention: the only implementation that applies Gemma 2's attention soft-capping
    return transformers.AutoModelForCausalLM.from_pretrained(
        folder, dtype=torch.float32, attn_implementation="eager"
    ).eval()


def make_base_folder(directory: Path, family: str, seed: int = 0) -> Path:
    config_class, model_class, extra, n_blocks = FAMILIES[family]
    tokenizer = make_tiny_tokenizer()
    config = getattr(transformers, config_class)(
        **_COMMON,
        **extra,
        num_hidden_layers=n_blocks,
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=family.startswith("gemma"),
    )
    torch.manual_seed(seed)
    model = getattr(transformers, model_class)(config)
    with torch.no_grad():  # HF initialises norm gains to exactly 1 (Gemma: 0); vary them
        for name, parameter in model.named_parameters():
            if "norm" in name:
                parameter.add_(0.1 * torch.randn_like(parameter))
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    if family == "phi3":  # llama.cpp's Phi-3 converter takes a BPE vocabulary for Phi-4's tokenizer class
        config_file = directory / "tokenizer_config.json"
        config_file.write_text(
            json.dumps(dict(json.loads(config_file.read_text()), tokenizer_class="GPT2Tokenizer"))
        )
    return directory


def expand(base_folder: Path, directory: Path, seed: int = 1) -> tuple[Path, dict[str, np.ndarray]]:
    """The expanded model: P inserted by the training code, then randomised; returns P's tensors too."""
    model = load_hf(base_folder)
    insert_pre_layer(model)
    torch.manual_seed(seed)
    with torch.no_grad():  # as training would: input projections move by 5%, the rest freely
        for name, parameter in model.model.layers[0].named_parameters():
            scale = 0.05 * float(parameter.std()) if name.endswith(PRE_LAYER_INPUTS) else 0.05
            parameter.add_(scale * torch.randn_like(parameter))
    model.save_pretrained(directory)
    transformers.AutoTokenizer.from_pretrained(base_folder).save_pretrained(directory)
    for name in ("tokenizer_config.json",):
        (directory / name).write_text((base_folder / name).read_text())
    return directory, {name: tensor.numpy() for name, tensor in pre_layer_state(model).items()}


def llama_cpp_converter(root: Path) -> Path | None:
    """llama.cpp's convert_hf_to_gguf.py with its gguf-py, from the cached llama-cpp-python sdist."""
    archives = sorted((cache_dir() / "downloads").glob("llama_cpp_python-*.tar.gz"))
    if not archives:
        return None
    if not list(root.glob("*/vendor/llama.cpp/convert_hf_to_gguf.py")):
        with tarfile.open(archives[-1]) as archive:
            wanted = (
                "/vendor/llama.cpp/convert_hf_to_gguf.py",
                "/vendor/llama.cpp/conversion/",
                "/vendor/llama.cpp/gguf-py/",
            )
            members = [m for m in archive.getmembers() if any(w in m.name for w in wanted)]
            archive.extractall(root, members=members, filter="data")
    return next(root.glob("*/vendor/llama.cpp/convert_hf_to_gguf.py"))


# The tiny folders have a byte-level BPE vocabulary that llama.cpp's converter does not recognise
# (it knows real models' pre-tokenizers by fingerprint), and Gemma 2's converter only reads
# SentencePiece files. The vocabulary does not enter the logits these tests compare, so the
# converter runs with llama.cpp's "default" pre-tokenizer and its BPE vocabulary code for every family.
# One interpreter converts several folders (importing torch once): argv = llama.cpp dir, then pairs.
_RUN_CONVERTER = """
import sys
llama_cpp_dir, pairs = sys.argv[1], sys.argv[2:]
sys.path.insert(0, llama_cpp_dir)
import conversion.base as base
base.TextModel.get_vocab_base_pre = lambda self, tokenizer: "default"
import conversion.gemma as gemma
gemma.Gemma2Model.set_vocab = base.TextModel._set_vocab_gpt2
import convert_hf_to_gguf
for folder, out in zip(pairs[::2], pairs[1::2]):
    sys.argv = ["convert_hf_to_gguf.py", folder, "--outfile", out, "--outtype", "f32"]
    convert_hf_to_gguf.main()
"""


def run_llama_cpp_converter(script: Path, jobs: list[tuple[Path, Path]]) -> None:
    """convert_hf_to_gguf.py on each (folder, out) pair, in F32."""
    llama_cpp_dir = script.parent
    env = dict(os.environ, PYTHONPATH=str(llama_cpp_dir / "gguf-py"))
    pairs = [str(path) for job in jobs for path in job]
    result = subprocess.run(
        [sys.executable, "-c", _RUN_CONVERTER, str(llama_cpp_dir), *pairs],
        capture_output=True,
        text=True,
        env=env,
    )
    if result.returncode != 0:
        raise RuntimeError(f"convert_hf_to_gguf.py failed:\n{result.stderr[-3000:]}")


def make_family_files(directory: Path, family: str, converter: Path | None) -> FamilyFiles:
    base_folder = make_base_folder(directory / "base", family)
    expanded_folder, pre_layer = expand(base_folder, directory / "expanded")
    files = {}
    convert(expanded_folder, directory / "clm_b.gguf", ConvertOptions(outtype="f32"))
    files["clm_b"] = directory / "clm_b.gguf"
    if converter is not None:
        files["base"] = directory / "base.gguf"
        files["llama_cpp_expanded"] = directory / "llama_cpp_expanded.gguf"
        run_llama_cpp_converter(
            converter, [(base_folder, files["base"]), (expanded_folder, files["llama_cpp_expanded"])]
        )
        checkpoint = write_checkpoint(directory / "checkpoint", pre_layer, files["base"])
        files["clm_a"] = directory / "clm_a.gguf"
        files["clm_c"] = directory / "clm_c.gguf"
        files["plain_expanded"] = directory / "plain_expanded.gguf"
        convert(checkpoint, files["clm_a"], ConvertOptions(outtype="f32"))
        convert(files["llama_cpp_expanded"], files["clm_c"], ConvertOptions())
        without_clm_keys(files["clm_c"], files["plain_expanded"])
    return FamilyFiles(family, base_folder, expanded_folder, files)


def without_clm_keys(source: Path, out: Path) -> None:
    reader = gguf.GGUFReader(source)
    metadata = [entry for entry in copy_metadata(reader, replace={}) if not entry.key.startswith("clm.")]
    arch = str(reader.get_field("general.architecture").contents())
    write_gguf(out, arch, metadata, [copy_tensor(t) for t in reader.tensors], force=False)
