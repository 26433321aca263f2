"""The paper's baseline for `recipe compare`: preference training of every weight of the base model.

Everything but the trained parameters is the recipe's: the same pairs, objectives (SFT on the
chosen answers first when the recipe does that), beta, learning rate, batch size and number of
steps, the same batch order (epoch e visits the pairs in `randperm(seed + e)` order, as the CLM
trainer does), AdamW without weight decay and gradient clipping at 1.0, and the same DPO
reference: the untrained base model.

The result is written as an F32 GGUF with the base's metadata, so that it runs through the same
runtime. F32 because the trained change of each weight is far below a 4-bit quantization step: a
quantized copy would erase most of the training (P ships in F32 for the same reason).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import gguf
import torch

from clm_local.converters.clm_metadata import check_gguf_source
from clm_local.converters.gguf_io import MetadataEntry, OutputTensor, copy_metadata, write_gguf
from clm_local.converters.graft import read_heads
from clm_local.converters.hf_tensors import gguf_tensor_name, reorder_for_llama_cpp
from clm_local.errors import ClmError
from clm_local.gguf.file import open_gguf
from clm_local.recipe.recipe import RecipeSettings, chosen_answers, peak_rss_bytes
from clm_local.training.base_model import load_model, load_tokenizer, resolve_base
from clm_local.training.data import Dataset, collate, load_dataset
from clm_local.training.objectives import dpo_terms, response_logprobs
from clm_local.training.trainer import MAX_GRAD_NORM


@dataclass(frozen=True)
class TrainingCost:
    """What a training run cost: the parameters it updated, its steps, time and peak memory."""

    parameters: int
    steps: int
    seconds: float
    peak_rss_bytes: int  # the process's high-water mark of resident memory after training


def train_full_dpo(base: Path, data: Path, out: Path, settings: RecipeSettings) -> TrainingCost:
    """Train every weight of `base` on the pairs of `data` as the recipe trains P; write `out` (F32 GGUF)."""
    source = resolve_base(base)
    tokenizer = load_tokenizer(source)
    model = load_model(source, torch.float32, torch.device("cpu"))
    parameters = list(model.parameters())  # unique: a tied LM head is the embedding's tensor
    for parameter in parameters:
        parameter.requires_grad_(True)
    pad = tokenizer.pad_token_id
    dpo_data = load_dataset(data, tokenizer, "dpo", settings.max_length)
    started = time.monotonic()
    with torch.no_grad():
        reference = _sequence_logprobs(model, dpo_data, settings.batch_size, pad)
    steps = 0
    if settings.sft_epochs:
        sft_data = load_dataset(chosen_answers(data), tokenizer, "sft", settings.max_length)
        steps += _optimize(model, sft_data, settings, pad, epochs=settings.sft_epochs, lr=settings.sft_lr)
    steps += _optimize(
        model, dpo_data, settings, pad, epochs=settings.epochs, lr=settings.lr, reference=reference
    )
    seconds = time.monotonic() - started
    write_trained_gguf(model, base, out)
    return TrainingCost(sum(p.numel() for p in parameters), steps, round(seconds, 1), peak_rss_bytes())


def _sequence_logprobs(model: torch.nn.Module, dataset: Dataset, batch_size: int, pad: int) -> torch.Tensor:
    """(pairs, 2) summed log-probs of chosen and rejected under the model as it is now."""
    logps = torch.zeros(len(dataset.examples), 2)
    for start in range(0, len(dataset.examples), batch_size):
        indices = list(range(start, min(start + batch_size, len(dataset.examples))))
        batch = collate([dataset.examples[i] for i in indices], pad, torch.device("cpu"))
        sums, _ = response_logprobs(model, batch)
        logps[indices] = sums.view(2, -1).T
    return logps


def _optimize(
    model: torch.nn.Module,
    dataset: Dataset,
    settings: RecipeSettings,
    pad: int,
    *,
    epochs: int,
    lr: float,
    reference: torch.Tensor | None = None,
) -> int:
    """Epochs of AdamW on every weight: DPO against `reference`, or SFT when it is None."""
    parameters = list(model.parameters())
    optimizer = torch.optim.AdamW(parameters, lr=lr, weight_decay=0.0)
    count, size = len(dataset.examples), settings.batch_size
    steps = 0
    for epoch in range(epochs):
        order = torch.randperm(count, generator=torch.Generator().manual_seed(settings.seed + epoch)).tolist()
        for start in range(0, count, size):
            indices = order[start : start + size]
            batch = collate([dataset.examples[i] for i in indices], pad, torch.device("cpu"))
            logps, tokens = response_logprobs(model, batch)
            if reference is None:
                loss = -logps.sum() / tokens.sum()
            else:
                losses, _, _ = dpo_terms(logps.view(2, -1), reference[indices].T, settings.beta)
                loss = losses.mean()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(parameters, MAX_GRAD_NORM)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            steps += 1
    if not math.isfinite(loss.item()):
        raise ClmError(f"full-model training diverged (loss {loss.item()})")
    return steps


def write_trained_gguf(model: torch.nn.Module, base: Path, out: Path) -> None:
    """`out`: the base GGUF's metadata and tensor list, every tensor replaced by the trained F32 one."""
    reader = open_gguf(base)
    arch = check_gguf_source(reader, base)
    heads = read_heads(reader, base, arch)
    n_blocks = int(reader.get_field(gguf.Keys.LLM.BLOCK_COUNT.format(arch=arch)).contents())
    trained = {}
    for hf_name, tensor in model.state_dict().items():
        try:
            trained[gguf_tensor_name(arch, hf_name, n_blocks)] = tensor
        except ClmError:
            continue  # buffers with no GGUF counterpart
    tensors = []
    for base_tensor in reader.tensors:
        ne = tuple(int(n) for n in base_tensor.shape)
        weights = trained.get(base_tensor.name)
        if weights is None or tuple(reversed(weights.shape)) != ne:
            raise ClmError(f"the trained model has no tensor for {base_tensor.name} of shape {ne}")
        array = reorder_for_llama_cpp(arch, base_tensor.name, weights.detach().float().numpy(), heads)
        tensors.append(OutputTensor(base_tensor.name, ne, gguf.GGMLQuantizationType.F32, array.copy()))
    file_type = reader.get_field(gguf.Keys.General.FILE_TYPE)
    replace = {}
    if file_type is not None:
        key = gguf.Keys.General.FILE_TYPE
        replace[key] = MetadataEntry(key, int(gguf.LlamaFileType.ALL_F32), file_type.types[0])
    write_gguf(out, arch, copy_metadata(reader, replace), tensors, force=True)
