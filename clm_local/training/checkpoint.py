"""The training checkpoint folder (CKPT), its manifest, and the optional expanded HF export.

CKPT holds:
- `pre_layer.safetensors`: P's tensors only, named as the base's block 0 in Hugging Face form
  (`model.layers.0.self_attn.q_proj.weight`, `model.layers.0.mlp.down_proj.weight`, ...; Qwen2 adds
  the q/k/v biases). Always float32, in Hugging Face layout even when the base is a GGUF (q/k rows
  are NOT in llama.cpp's permuted order). Metadata `clm_step` is the optimizer step it was saved at.
- `clm_manifest.json`: described below; written last, so it never points at weights not yet saved.
- `trainer_state.pt`: optimizer (and fp16 grad-scaler) state, for `--resume`.
- `metrics.jsonl`: one JSON object per optimizer step (`"split": "train"`) and per evaluation
  (`"split": "eval"`), each with `step`.
- `reference_logps.safetensors` (DPO): the base's log-probs of every chosen and rejected answer,
  `train` and `eval` tensors of shape (examples, 2), computed once; metadata `clm_reference_key`
  names what they depend on (base and data sha256, max lengths, compute dtype), so a resumed run
  reuses them and any change recomputes them. Kept by `--force` (the key guards it).
Every file is written to a temporary name and moved into place (clm_local.files.atomic_file), so
an interrupted run leaves the previous complete checkpoint readable.

Manifest fields (`clm_manifest.json`), format_version 1:
- `format`: "clm-local-pre-layer"; `format_version`: 1.
- `architecture`: the GGUF `general.architecture` of the base (one of gguf_keys.SUPPORTED_ARCHITECTURES).
- `base_block_count`: N, the base's block count; the CLM model has N + `pre_layer_count` blocks.
- `pre_layer_count`: 1. `pre_layer_file`: "pre_layer.safetensors". `tensor_prefix`: "model.layers.0.".
- `dtype`: dtype of the saved tensors ("fp32").
- `compute_dtype`: the dtype the base ran in during training ("fp32", "bf16" or "fp16").
- `objective`: "dpo" or "sft".
- `base`: `{"path", "kind": "gguf" | "hf", "files": [{"name", "size", "sha256"}]}`: the GGUF file, or the
  folder's safetensors files; the converter compares these with the base it is given.
- `data`, `eval_data`: `{"path", "sha256", "examples", "truncated", "skipped_lines"}`;
  `eval_data` is null without `--eval-data`.
- `hyperparameters`: beta, lr, epochs, max_steps, batch_size, grad_accum, max_length, seed, device,
  save_every, init_from (the CKPT P started from, or null).
- `progress`: `{"step", "total_steps", "epoch", "finished"}` (epoch is fractional).
- `metrics`: `{"train": {...}, "eval": {...} | null}`: train metrics averaged over the steps since the
  previous checkpoint (DPO: loss, reward_accuracy, reward_margin, chosen_reward, rejected_reward;
  SFT: loss = mean negative log-likelihood per response token), eval metrics on the whole eval set.
- `saved_at`: UTC ISO time; `software`: versions of clm-local, torch and transformers.
"""

from __future__ import annotations

import copy
import json
from datetime import datetime, timezone
from importlib.metadata import version
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from clm_local.errors import ClmError
from clm_local.files import atomic_file, write_json
from clm_local.training.clm_block import PRE_LAYER_PREFIX, pre_layer_of, replaced_pre_layer

FORMAT = "clm-local-pre-layer"
FORMAT_VERSION = 1
MANIFEST_FILE = "clm_manifest.json"
PRE_LAYER_FILE = "pre_layer.safetensors"
STATE_FILE = "trainer_state.pt"
METRICS_FILE = "metrics.jsonl"
REFERENCE_FILE = "reference_logps.safetensors"
RUN_FILES = (MANIFEST_FILE, PRE_LAYER_FILE, STATE_FILE, METRICS_FILE)


def prepare_output(directory: Path, resume: bool, force: bool, write: bool = True) -> None:
    """Make sure CKPT can be written: refuse to overwrite anything unless asked to. With `write`
    False (the other processes of a distributed run) only check, and leave the folder to rank 0."""
    if resume:
        if not ((directory / MANIFEST_FILE).is_file() and (directory / STATE_FILE).is_file()):
            raise ClmError(
                f"--resume: {directory} holds no run to resume (no {MANIFEST_FILE} / {STATE_FILE})"
            )
        return
    if directory.exists() and not directory.is_dir():
        raise ClmError(f"output {directory} exists and is not a folder")
    if directory.is_dir() and any(directory.iterdir()) and not force:
        if (directory / MANIFEST_FILE).exists():
            raise ClmError(
                f"{directory} already holds a training run: "
                "use --resume to continue it or --force to start over"
            )
        raise ClmError(
            f"{directory} exists and is not a clm-local checkpoint: use --force to write into it anyway"
        )
    if not write:
        return
    directory.mkdir(parents=True, exist_ok=True)
    for name in RUN_FILES:  # --force: start clean, but touch nothing that is not ours
        (directory / name).unlink(missing_ok=True)


def make_manifest(
    *,
    architecture: str,
    base_block_count: int,
    compute_dtype: str,
    objective: str,
    base: dict,
    data: dict,
    eval_data: dict | None,
    hyperparameters: dict,
    progress: dict,
    metrics: dict,
) -> dict:
    """The manifest, field by field as documented at the top of this module."""
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "architecture": architecture,
        "base_block_count": base_block_count,
        "pre_layer_count": 1,
        "pre_layer_file": PRE_LAYER_FILE,
        "tensor_prefix": PRE_LAYER_PREFIX,
        "dtype": "fp32",
        "compute_dtype": compute_dtype,
        "objective": objective,
        "base": base,
        "data": data,
        "eval_data": eval_data,
        "hyperparameters": hyperparameters,
        "progress": progress,
        "metrics": metrics,
        "saved_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "software": {name: version(name) for name in ("clm-local", "torch", "transformers")},
    }


def save_checkpoint(
    directory: Path, pre_layer: dict[str, torch.Tensor], trainer_state: dict, manifest: dict
) -> None:
    """Write P, the trainer state and the manifest (last), each atomically."""
    step = str(manifest["progress"]["step"])
    tensors = {name: tensor.float() for name, tensor in pre_layer.items()}
    with atomic_file(directory / PRE_LAYER_FILE) as path:
        save_file(tensors, path, metadata={"format": "pt", "clm_step": step})
    with atomic_file(directory / STATE_FILE) as path:
        torch.save(trainer_state, path)
    write_json(directory / MANIFEST_FILE, manifest)


def read_manifest(directory: Path) -> dict:
    """The manifest of a checkpoint folder, checked for format and version."""
    path = Path(directory) / MANIFEST_FILE
    if not path.is_file():
        raise ClmError(f"{directory} is not a clm-local checkpoint (no {MANIFEST_FILE})")
    try:
        manifest = json.loads(path.read_text())
    except ValueError as error:
        raise ClmError(f"{path} is not valid JSON ({error})") from None
    if manifest.get("format") != FORMAT or manifest.get("format_version") != FORMAT_VERSION:
        raise ClmError(f"{path} is not a version {FORMAT_VERSION} {FORMAT} manifest")
    return manifest


def load_pre_layer(directory: Path) -> tuple[dict[str, torch.Tensor], int]:
    """P's tensors from a checkpoint and the step they were saved at."""
    path = Path(directory) / PRE_LAYER_FILE
    if not path.is_file():
        raise ClmError(f"{directory} has no {PRE_LAYER_FILE}")
    with safe_open(str(path), framework="pt") as handle:
        step = int((handle.metadata() or {}).get("clm_step", -1))
    return load_file(path), step


def load_trainer_state(directory: Path, expected_step: int) -> dict:
    """The optimizer state saved with the P of `expected_step` (refused if they do not match)."""
    state = torch.load(Path(directory) / STATE_FILE, map_location="cpu", weights_only=True)
    if state["step"] != expected_step:
        raise ClmError(
            f"{directory}: {PRE_LAYER_FILE} and {STATE_FILE} are from different steps "
            "(the run was stopped while saving); start over with --force"
        )
    return state


def save_reference(directory: Path, logps: dict[str, torch.Tensor], key: dict) -> None:
    """Write the reference log-probs of each split with the key they were computed under."""
    tensors = {split: tensor.float().contiguous() for split, tensor in logps.items()}
    metadata = {"format": "pt", "clm_reference_key": json.dumps(key, sort_keys=True)}
    with atomic_file(directory / REFERENCE_FILE) as path:
        save_file(tensors, path, metadata=metadata)


def load_reference(directory: Path, key: dict) -> dict[str, torch.Tensor] | None:
    """The cached reference log-probs if they were computed under `key`, else None."""
    path = Path(directory) / REFERENCE_FILE
    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="pt") as handle:
            if (handle.metadata() or {}).get("clm_reference_key") != json.dumps(key, sort_keys=True):
                return None
            return {name: handle.get_tensor(name) for name in handle.keys()}  # noqa: SIM118
    except (OSError, ValueError, RuntimeError):  # unreadable (e.g. cut short): recompute
        return None


def export_hf(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, directory: Path, force: bool
) -> None:
    """Write the full expanded model (N+1 blocks, block 0 = P) with its tokenizer: the authors' layout.

    P is saved in the base's dtype (its float32 master copy is left untouched).
    """
    if directory.exists() and (not directory.is_dir() or any(directory.iterdir())) and not force:
        raise ClmError(
            f"--export-hf: {directory} exists and is not empty: use --force to write into it anyway"
        )
    base_dtype = model.lm_head.weight.dtype
    with replaced_pre_layer(model, copy.deepcopy(pre_layer_of(model)).to(base_dtype)):
        model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
