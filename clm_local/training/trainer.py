"""A training run, start to finish: `train(base, data, output, options)`.

1. Refuse bad input early (base, output folder, data) before any weights are loaded.
2. Load the base, insert P, and check that the model with P still equals the base.
3. DPO: compute the reference log-probabilities once, with P bypassed (same network, no copy).
4. Train P only (AdamW, gradient clipping at 1.0), writing metrics every step and a checkpoint
   every `save_every` steps and at the end; `resume` continues from the last checkpoint exactly.

Batches are deterministic: epoch e visits the examples in `randperm(seed + e)` order, and optimizer
step s of an epoch takes the next `batch_size * grad_accum` of them. A resumed run therefore
sees the same batches, with the same optimizer state, as one that was never stopped.
"""

from __future__ import annotations

import json
import logging
import math
import sys
import time
from collections import defaultdict
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import torch
from tqdm import tqdm

from clm_local.errors import ClmError
from clm_local.files import sha256_file
from clm_local.training import checkpoint
from clm_local.training.base_model import (
    base_architecture,
    base_identity,
    load_model,
    load_tokenizer,
    resolve_base,
)
from clm_local.training.clm_block import (
    bypass_pre_layer,
    cached_logits,
    check_identity,
    insert_pre_layer,
    load_pre_layer_state,
    pre_layer_state,
)
from clm_local.training.data import Dataset, collate, load_dataset
from clm_local.training.devices import dtype_name, resolve_device, resolve_dtype
from clm_local.training.inputs import check_inputs, removed_if_left_empty
from clm_local.training.objectives import dpo_terms, response_logprobs

log = logging.getLogger(__name__)

OBJECTIVES = ("dpo", "sft")
MAX_GRAD_NORM = 1.0
IDENTITY_PROBE_TOKENS = 64
# Settings that decide which batches a step sees: a resumed run must keep them.
RESUME_KEYS = ("seed", "batch_size", "grad_accum", "max_length")


@dataclass
class TrainOptions:
    """Everything `clm-local train` accepts besides BASE, DATA and CKPT (same names, same defaults)."""

    objective: str = "dpo"
    beta: float = 0.1
    lr: float = 1e-5
    epochs: int = 1
    max_steps: int | None = None  # if set, overrides epochs (the data is cycled as needed)
    batch_size: int = 4
    grad_accum: int = 1
    max_length: int = 1024
    seed: int = 0
    device: str = "auto"
    dtype: str = "auto"
    eval_data: str | Path | None = None
    save_every: int = 100
    resume: bool = False
    force: bool = False
    skip_bad_lines: bool = False
    export_hf: str | Path | None = None
    init_from: str | Path | None = None
    progress: bool = True

    def validate(self) -> None:
        """Refuse values that cannot work, with the option's CLI name."""
        checks = [
            (self.objective in OBJECTIVES, f"--objective must be one of {', '.join(OBJECTIVES)}"),
            (self.beta > 0, "--beta must be positive"),
            (self.lr > 0, "--lr must be positive"),
            (self.epochs >= 1, "--epochs must be at least 1"),
            (self.max_steps is None or self.max_steps >= 1, "--max-steps must be at least 1"),
            (self.batch_size >= 1, "--batch-size must be at least 1"),
            (self.grad_accum >= 1, "--grad-accum must be at least 1"),
            (self.max_length >= 2, "--max-length must be at least 2"),
            (self.save_every >= 1, "--save-every must be at least 1"),
        ]
        for ok, message in checks:
            if not ok:
                raise ClmError(message)


@dataclass(frozen=True)
class TrainResult:
    """What a finished run produced: the checkpoint folder, its last step, metrics and manifest."""

    output: Path
    step: int
    metrics: dict
    manifest: dict


def _data_info(dataset: Dataset) -> dict:
    return {
        "path": str(dataset.path.resolve()),
        "sha256": sha256_file(dataset.path),
        "examples": len(dataset.examples),
        "truncated": dataset.truncated,
        "skipped_lines": dataset.skipped_lines,
    }


def _hyperparameters(options: TrainOptions, device: torch.device) -> dict:
    """The manifest's record of how P was trained."""
    return {
        "beta": options.beta,
        "lr": options.lr,
        "epochs": options.epochs,
        "max_steps": options.max_steps,
        "batch_size": options.batch_size,
        "grad_accum": options.grad_accum,
        "max_length": options.max_length,
        "seed": options.seed,
        "save_every": options.save_every,
        "device": device.type,
        "init_from": str(Path(options.init_from).resolve()) if options.init_from else None,
        "optimizer": "AdamW(weight_decay=0)",
        "max_grad_norm": MAX_GRAD_NORM,
    }


def _same_base(manifest: dict, identity: dict) -> bool:
    return [f["sha256"] for f in manifest["base"]["files"]] == [f["sha256"] for f in identity["files"]]


class Trainer:
    """Holds the CLM model, the optimizer and the data of one run; `run()` trains and saves."""

    def __init__(self, base: str | Path, data: str | Path, output: str | Path, options: TrainOptions) -> None:
        options.validate()
        self.options = options
        self.output = Path(output)
        source = resolve_base(base)
        self.architecture = base_architecture(source)
        checkpoint.prepare_output(self.output, options.resume, options.force)
        previous = checkpoint.read_manifest(self.output) if options.resume else None
        initial = checkpoint.read_manifest(Path(options.init_from)) if options.init_from else None

        self.device = resolve_device(options.device)
        self.dtype = resolve_dtype(options.dtype, self.device)
        self.tokenizer = load_tokenizer(source)
        self.datasets = {"train": self._load_data(data)}
        if options.eval_data:
            self.datasets["eval"] = self._load_data(options.eval_data)
        self.data_info = {split: _data_info(dataset) for split, dataset in self.datasets.items()}
        log.info("hashing the base model's weight files")
        self.base = base_identity(source)
        self.hyperparameters = _hyperparameters(options, self.device)
        if previous is not None:
            self._check_resumable(previous)
        if initial is not None and not _same_base(initial, self.base):
            raise ClmError(f"--init-from {options.init_from} was trained on a different base model")

        log.info(
            "loading %s (%s) on %s in %s", source.path, self.architecture, self.device, dtype_name(self.dtype)
        )
        self.model = load_model(source, self.dtype, self.device)
        self.base_block_count = self.model.config.num_hidden_layers
        self.pre_layer = self._build_clm()
        self.optimizer = torch.optim.AdamW(self.pre_layer.parameters(), lr=options.lr, weight_decay=0.0)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.dtype == torch.float16)
        self.step = 0
        if options.resume:
            self._restore(self.output, with_optimizer=True)
        elif options.init_from:
            self._restore(Path(options.init_from), with_optimizer=False)

        examples_per_step = options.batch_size * options.grad_accum
        self.steps_per_epoch = math.ceil(len(self.datasets["train"].examples) / examples_per_step)
        self.total_steps = options.max_steps or options.epochs * self.steps_per_epoch
        self.reference: dict[str, torch.Tensor] = {}  # DPO: filled at the start of run()

    # -- setup -------------------------------------------------------------------------------------

    def _load_data(self, path: str | Path) -> Dataset:
        o = self.options
        return load_dataset(path, self.tokenizer, o.objective, o.max_length, o.skip_bad_lines)

    def _check_resumable(self, previous: dict) -> None:
        """A resumed run must train the same P on the same batches; epochs/max-steps/lr may change."""
        if not _same_base(previous, self.base):
            raise ClmError(f"--resume: {self.output} was trained on a different base model")
        if previous["objective"] != self.options.objective:
            raise ClmError(
                f"--resume: {self.output} is a {previous['objective']} run, not {self.options.objective}"
            )
        if previous["data"]["sha256"] != self.data_info["train"]["sha256"]:
            raise ClmError(f"--resume: the data file differs from the one {self.output} was trained on")
        for key in RESUME_KEYS:
            before, now = previous["hyperparameters"][key], self.hyperparameters[key]
            if before != now:
                raise ClmError(
                    f"--resume: --{key.replace('_', '-')} was {before} in {self.output}, now {now}"
                )

    def _build_clm(self) -> torch.nn.Module:
        """Insert P and prove the result equals the base, on the start of the first example."""
        first = self.datasets["train"].examples[0]
        probe = (first.prompt + first.responses[0])[-IDENTITY_PROBE_TOKENS:]
        input_ids = torch.tensor([probe], device=self.device)
        with self._autocast():
            base_logits = cached_logits(self.model, input_ids)
            pre_layer = insert_pre_layer(self.model)
            deviation = check_identity(self.model, base_logits, input_ids)
        log.info("identity check passed (largest logit deviation %.3g)", deviation)
        return pre_layer

    def _restore(self, directory: Path, with_optimizer: bool) -> None:
        tensors, step = checkpoint.load_pre_layer(directory)
        load_pre_layer_state(self.model, tensors)
        if with_optimizer:
            state = checkpoint.load_trainer_state(directory, step)
            self.optimizer.load_state_dict(state["optimizer"])
            self.scaler.load_state_dict(state["scaler"])
            self.step = step
            log.info("resuming %s at step %d", directory, step)

    def _autocast(self) -> AbstractContextManager:
        """Base matmuls in the compute dtype while P's master weights stay float32."""
        if self.dtype == torch.float32:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    @torch.no_grad()
    def _reference_logps(self, dataset: Dataset) -> torch.Tensor:
        """(examples, 2) reference log-probs of chosen and rejected, from the base (P bypassed).

        Computed once per run: P is the only thing that changes, and it is bypassed here."""
        size, rows = self.options.batch_size, []
        chunks = range(0, len(dataset.examples), size)
        bar = tqdm(chunks, desc="reference log-probs", file=sys.stderr, disable=not self.options.progress)
        with bypass_pre_layer(self.model), self._autocast():
            for start in bar:
                batch = collate(
                    dataset.examples[start : start + size], self.tokenizer.pad_token_id, self.device
                )
                logps, _ = response_logprobs(self.model, batch)
                rows.append(logps.view(2, -1).T.cpu())
        return torch.cat(rows)

    # -- one forward ---------------------------------------------------------------------------------

    def _forward(self, split: str, indices: list[int]) -> tuple[torch.Tensor, dict, int]:
        """Summed loss of these examples of `split`, summed metric terms, and the count they are
        averaged over (pairs for DPO, response tokens for SFT)."""
        examples = [self.datasets[split].examples[i] for i in indices]
        batch = collate(examples, self.tokenizer.pad_token_id, self.device)
        with self._autocast():
            logps, counts = response_logprobs(self.model, batch)
        if self.options.objective == "sft":
            loss = -logps.sum()
            return loss, {"loss": loss.item()}, int(counts.sum())
        reference = self.reference[split][indices].T.to(self.device)
        losses, chosen, rejected = dpo_terms(logps.view(2, -1), reference, self.options.beta)
        terms = {
            "loss": losses.sum().item(),
            "reward_accuracy": (chosen > rejected).sum().item(),
            "reward_margin": (chosen - rejected).sum().item(),
            "chosen_reward": chosen.sum().item(),
            "rejected_reward": rejected.sum().item(),
        }
        return losses.sum(), terms, len(indices)

    # -- training ----------------------------------------------------------------------------------

    def _step_indices(self, step: int) -> list[int]:
        """The examples of optimizer step `step`: a slice of its epoch's seeded permutation."""
        epoch, position = divmod(step, self.steps_per_epoch)
        generator = torch.Generator().manual_seed(self.options.seed + epoch)
        order = torch.randperm(len(self.datasets["train"].examples), generator=generator)
        per_step = self.options.batch_size * self.options.grad_accum
        return order[position * per_step : (position + 1) * per_step].tolist()

    def _train_step(self) -> dict:
        """One optimizer step over `grad_accum` micro-batches; the loss is normalised over the whole
        step, so the result does not depend on how the step is split."""
        indices = self._step_indices(self.step)
        size = self.options.batch_size
        if self.options.objective == "dpo":
            total = len(indices)
        else:
            total = sum(len(self.datasets["train"].examples[i].responses[0]) for i in indices)
        sums: dict[str, float] = defaultdict(float)
        for start in range(0, len(indices), size):
            loss, terms, _ = self._forward("train", indices[start : start + size])
            self.scaler.scale(loss / total).backward()
            for key, value in terms.items():
                sums[key] += value
        self.scaler.unscale_(self.optimizer)
        grad_norm = torch.nn.utils.clip_grad_norm_(self.pre_layer.parameters(), MAX_GRAD_NORM)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        return {key: value / total for key, value in sums.items()} | {"grad_norm": grad_norm.item()}

    @torch.no_grad()
    def evaluate(self) -> dict:
        """Metrics of the current P on the eval set (the train-time definitions, averaged over it)."""
        sums: dict[str, float] = defaultdict(float)
        total = 0
        count, size = len(self.datasets["eval"].examples), self.options.batch_size
        for start in range(0, count, size):
            _, terms, units = self._forward("eval", list(range(start, min(start + size, count))))
            total += units
            for key, value in terms.items():
                sums[key] += value
        return {key: value / total for key, value in sums.items()}

    def _save(self, window: list[dict], eval_metrics: dict | None) -> dict:
        """Write the checkpoint; train metrics are averages over `window`, the steps since the last save."""
        manifest = checkpoint.make_manifest(
            architecture=self.architecture,
            base_block_count=self.base_block_count,
            compute_dtype=dtype_name(self.dtype),
            objective=self.options.objective,
            base=self.base,
            data=self.data_info["train"],
            eval_data=self.data_info.get("eval"),
            hyperparameters=self.hyperparameters,
            progress={
                "step": self.step,
                "total_steps": self.total_steps,
                "epoch": round(self.step / self.steps_per_epoch, 4),
                "finished": self.step >= self.total_steps,
            },
            metrics={
                "train": {key: sum(m[key] for m in window) / len(window) for key in window[0]},
                "eval": eval_metrics,
            },
        )
        state = {
            "step": self.step,
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
        }
        checkpoint.save_checkpoint(self.output, pre_layer_state(self.model), state, manifest)
        return manifest

    def _open_metrics(self) -> TextIO:
        """metrics.jsonl, cut back to the resumed step so it reads like one uninterrupted run."""
        path = self.output / checkpoint.METRICS_FILE
        kept = []
        if self.options.resume and path.is_file():
            kept = [line for line in path.read_text().splitlines() if json.loads(line)["step"] <= self.step]
        path.write_text("".join(line + "\n" for line in kept))
        return path.open("a", encoding="utf-8")

    def run(self) -> TrainResult:
        """Train until `total_steps`, checkpointing as configured; export the HF layout if asked."""
        if self.options.objective == "dpo":
            self.reference = {split: self._reference_logps(data) for split, data in self.datasets.items()}
        window: list[dict] = []
        eval_metrics = manifest = None
        started = time.monotonic()
        bar = tqdm(
            total=self.total_steps,
            initial=self.step,
            desc=f"{self.options.objective} training",
            unit="step",
            file=sys.stderr,
            disable=not self.options.progress,
        )
        with self._open_metrics() as metrics_file, bar:

            def record(split: str, metrics: dict) -> None:
                line = {
                    "split": split,
                    "step": self.step,
                    "epoch": round(self.step / self.steps_per_epoch, 4),
                }
                line |= metrics | {"elapsed_s": round(time.monotonic() - started, 3)}
                metrics_file.write(json.dumps(line) + "\n")
                metrics_file.flush()

            while self.step < self.total_steps:
                metrics = self._train_step()
                window.append(metrics)
                record("train", metrics | {"lr": self.options.lr})
                bar.update(1)
                bar.set_postfix(_postfix(metrics))
                if self.step % self.options.save_every == 0 or self.step == self.total_steps:
                    if "eval" in self.datasets:
                        eval_metrics = self.evaluate()
                        record("eval", eval_metrics)
                    manifest = self._save(window, eval_metrics)
                    window = []
        if manifest is None:  # nothing left to train (a resumed run that had finished): keep its files
            manifest = checkpoint.read_manifest(self.output)
        log.info("checkpoint saved in %s (step %d)", self.output, self.step)
        if self.options.export_hf:
            checkpoint.export_hf(self.model, self.tokenizer, Path(self.options.export_hf), self.options.force)
            log.info("expanded Hugging Face model written to %s", self.options.export_hf)
        return TrainResult(self.output, self.step, manifest["metrics"], manifest)


def _postfix(metrics: dict) -> dict:
    short = {"loss": "loss", "reward_accuracy": "acc", "reward_margin": "margin"}
    return {name: f"{metrics[key]:.4f}" for key, name in short.items() if key in metrics}


def train(
    base: str | Path, data: str | Path, output: str | Path, options: TrainOptions | None = None
) -> TrainResult:
    """Train the CLM pre-layer on `base` with the JSONL `data`; write the checkpoint to `output`.

    `base` is a Hugging Face model folder or a GGUF file (Llama and Qwen2 families). Raises ClmError
    with a one-line message for every expected failure; bad inputs fail before anything slow, and a
    failed run leaves no empty output folder behind.
    """
    options = options or TrainOptions()
    check_inputs(base, data, options)
    with removed_if_left_empty(Path(output)):
        return Trainer(base, data, output, options).run()
