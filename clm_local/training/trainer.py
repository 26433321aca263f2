"""A training run, start to finish: `train(base, data, output, options)`.

1. Refuse bad input early (base, output folder, data) before any weights are loaded.
2. Load the base, insert P, and check that the model with P still equals the base.
3. DPO: compute the reference log-probabilities once, with P bypassed (same network, no copy),
   of the examples the run reads (the steps it has left, and the eval set): a short run
   (`--max-steps 2`) computes a few batches, not the whole file. They are cached in CKPT (pairs
   not computed yet hold NaN), so a resumed or longer run computes only the pairs it lacks.
4. Train P only (AdamW, gradient clipping at 1.0, TRL's learning-rate schedules), writing metrics
   every step and a checkpoint every `save_every` steps and at the end; `resume` continues from the
   last checkpoint exactly.

Memory: the frozen base runs in the compute dtype (`--dtype`), P and AdamW's state stay float32;
the frozen blocks can be recomputed in the backward pass (`memory.py`), and the answer tokens'
log-probs are computed a chunk of positions at a time (`objectives.token_logprobs`).

Batches are deterministic: epoch e visits the examples in `randperm(seed + e)` order, and optimizer
step s of an epoch takes the next `batch_size * grad_accum * processes` of them, each process its
DistributedSampler share (see `distributed.py`). A resumed run therefore sees the same batches, with
the same optimizer state, as one that was never stopped.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import torch
from tqdm import tqdm
from transformers import get_scheduler

from clm_local.errors import ClmError
from clm_local.files import sha256_file, write_text
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
    decoder_layers,
    insert_pre_layer,
    load_pre_layer_state,
    pre_layer_state,
    replaced_pre_layer,
)
from clm_local.training.data import Dataset, collate, load_dataset
from clm_local.training.devices import dtype_name, resolve_device, resolve_dtype
from clm_local.training.distributed import SINGLE, World, process_group
from clm_local.training.inputs import check_inputs, removed_if_left_empty
from clm_local.training.memory import checkpoint_blocks, checkpointing_default
from clm_local.training.objectives import auto_chunk_tokens, dpo_terms, response_logprobs
from clm_local.training.options import TrainOptions

log = logging.getLogger(__name__)

MAX_GRAD_NORM = 1.0
LOG_EVERY_SHARE = 0.05  # without a terminal, a progress line every 5% of the steps
IDENTITY_PROBE_TOKENS = 64
# Settings that decide which batches a step sees: a resumed run must keep them. Manifests written
# before a key existed hold its old behaviour, given here.
RESUME_KEYS = ("seed", "batch_size", "grad_accum", "max_length", "max_prompt_length", "processes")
RESUME_KEY_DEFAULTS = {"processes": 1}
# Told after every optimizer step: (objective, step, total_steps, the step's train metrics). Why:
# a caller that reports progress elsewhere (`clm_local.teach`'s JSON lines) needs each step's
# numbers as they happen, not the log's every-5% summary.
StepCallback = Callable[[str, int, int, dict], None]


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


def _hyperparameters(options: TrainOptions, device: torch.device, world: World) -> dict:
    """The manifest's record of how P was trained (the memory settings are added once the base is loaded)."""
    return {
        "beta": options.beta,
        "lr": options.lr,
        "lr_scheduler": options.lr_scheduler,
        "warmup_ratio": options.warmup_ratio,
        "epochs": options.epochs,
        "max_steps": options.max_steps,
        "batch_size": options.batch_size,
        "grad_accum": options.grad_accum,
        "processes": world.size,
        "max_length": options.max_length,
        "max_prompt_length": options.max_prompt_length or options.max_length // 2,
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

    def __init__(
        self,
        base: str | Path,
        data: str | Path,
        output: str | Path,
        options: TrainOptions,
        world: World = SINGLE,
        *,
        on_step: StepCallback | None = None,
    ) -> None:
        options.validate()
        self.options = options
        self.world = world
        self.on_step = on_step
        self.output = Path(output)
        source = resolve_base(base)
        self.architecture = base_architecture(source)
        checkpoint.prepare_output(self.output, options.resume, options.force, write=world.is_main)
        previous = checkpoint.read_manifest(self.output) if options.resume else None
        initial = checkpoint.read_manifest(Path(options.init_from)) if options.init_from else None

        self.device = world.device(resolve_device(options.device))
        self.dtype = resolve_dtype(options.dtype, self.device)
        self.tokenizer = load_tokenizer(source)
        self.datasets = {"train": self._load_data(data)}
        if options.eval_data:
            self.datasets["eval"] = self._load_data(options.eval_data)
        self.data_info = {split: _data_info(dataset) for split, dataset in self.datasets.items()}
        log.info("hashing the base model's weight files")
        self.base = base_identity(source)
        self.hyperparameters = _hyperparameters(options, self.device, world)
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
        self._configure_memory()
        # What the training forward calls in P's place: P itself, or P wrapped in DDP.
        self.trained_pre_layer = world.wrap(self.pre_layer, self.device)
        self.optimizer = torch.optim.AdamW(self.pre_layer.parameters(), lr=options.lr, weight_decay=0.0)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.dtype == torch.float16)
        self.step = 0
        if options.resume:
            self._restore(self.output, with_optimizer=True)
        elif options.init_from:
            self._restore(Path(options.init_from), with_optimizer=False)

        # DistributedSampler pads each epoch's order to a multiple of the processes.
        padded = math.ceil(len(self.datasets["train"].examples) / world.size) * world.size
        self.examples_per_step = options.batch_size * options.grad_accum * world.size
        self.steps_per_epoch = math.ceil(padded / self.examples_per_step)
        self.total_steps = options.max_steps or options.epochs * self.steps_per_epoch
        self.scheduler = self._lr_schedule()
        self.reference: dict[str, torch.Tensor] = {}  # DPO: filled at the start of run()

    # -- setup -------------------------------------------------------------------------------------

    def _load_data(self, path: str | Path) -> Dataset:
        o = self.options
        return load_dataset(
            path, self.tokenizer, o.objective, o.max_length, o.skip_bad_lines, o.max_prompt_length
        )

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
            before = previous["hyperparameters"].get(key, RESUME_KEY_DEFAULTS.get(key))
            now = self.hyperparameters[key]
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

    def _configure_memory(self) -> None:
        """Gradient checkpointing of the frozen blocks and the LM head's chunk size (see module doc)."""
        o = self.options
        self.checkpointing = (
            checkpointing_default(self.model)
            if o.gradient_checkpointing is None
            else o.gradient_checkpointing
        )
        if self.checkpointing:
            checkpoint_blocks(list(decoder_layers(self.model))[1:])
        vocabulary = self.model.lm_head.out_features
        self.chunk_tokens = (
            auto_chunk_tokens(vocabulary) if o.logprob_chunk_tokens is None else o.logprob_chunk_tokens
        )
        self.hyperparameters |= {
            "gradient_checkpointing": self.checkpointing,
            "logprob_chunk_tokens": self.chunk_tokens,
        }
        log.info(
            "gradient checkpointing %s; answer log-probs in chunks of %s tokens",
            "on" if self.checkpointing else "off",
            self.chunk_tokens or "all",
        )

    def _lr_schedule(self) -> torch.optim.lr_scheduler.LambdaLR:
        """TRL's schedule (transformers' `get_scheduler`) for this run, positioned at `self.step`.

        Warmup lasts ceil(warmup_ratio * total_steps) steps, as in transformers' TrainingArguments.
        The schedule is a function of the step, so a resumed run rebuilds it rather than loading it:
        a changed --lr or --max-steps then takes effect (a loaded optimizer state would keep the old lr).
        """
        for group in self.optimizer.param_groups:
            group["lr"] = group["initial_lr"] = self.options.lr
        scheduler = get_scheduler(
            self.options.lr_scheduler,
            self.optimizer,
            num_warmup_steps=math.ceil(self.options.warmup_ratio * self.total_steps),
            num_training_steps=self.total_steps,
        )
        if self.step:  # the closed form at this step (stepping the scheduler here would warn)
            scheduler.last_epoch = self.step
            factors = scheduler.lr_lambdas
            for group, base_lr, factor in zip(
                self.optimizer.param_groups, scheduler.base_lrs, factors, strict=True
            ):
                group["lr"] = base_lr * factor(self.step)
        return scheduler

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

    def _reference_key(self) -> dict:
        """What the reference log-probs depend on: a cache made under another key is recomputed."""
        o = self.options
        return {
            "base": [file["sha256"] for file in self.base["files"]],
            "data": {split: info["sha256"] for split, info in self.data_info.items()},
            "max_length": o.max_length,
            "max_prompt_length": self.hyperparameters["max_prompt_length"],
            "skip_bad_lines": o.skip_bad_lines,
            "compute_dtype": dtype_name(self.dtype),
        }

    def _needed_examples(self) -> dict[str, list[int]]:
        """The examples of each split whose reference log-probs this run reads: those of the
        steps it has left (every example once they span an epoch) and the whole eval set."""
        count = len(self.datasets["train"].examples)
        wanted: set[int] = set()
        orders: dict[int, list[int]] = {}
        per_step = self.examples_per_step
        for step in range(self.step, self.total_steps):
            epoch, position = divmod(step, self.steps_per_epoch)
            if epoch not in orders:
                orders[epoch] = self._epoch_order(epoch)
            wanted.update(orders[epoch][position * per_step : (position + 1) * per_step])
            if len(wanted) == count:
                break
        needed = {"train": sorted(wanted)}
        if "eval" in self.datasets:
            needed["eval"] = list(range(len(self.datasets["eval"].examples)))
        return needed

    def _load_or_compute_reference(self) -> dict[str, torch.Tensor]:
        """The reference log-probs of every split (NaN where this run does not read them), from
        CKPT's cache where it was made for this run, computed for the examples it lacks."""
        key = self._reference_key()
        needed = self._needed_examples()
        cached = checkpoint.load_reference(self.output, key) or {}
        reference = {}
        for split, dataset in self.datasets.items():
            shape = (len(dataset.examples), 2)
            held = cached.get(split)
            usable_cache = held is not None and held.shape == shape
            reference[split] = held if usable_cache else torch.full(shape, math.nan)
        missing = {}
        for split, indices in needed.items():
            absent = torch.isnan(reference[split]).any(dim=1).tolist()
            missing[split] = [i for i in indices if absent[i]]
        usable = not any(missing.values())
        if self.world.all_true(usable, self.device):  # all processes must take the same path
            if cached:
                log.info("reference log-probs read from %s", self.output / checkpoint.REFERENCE_FILE)
            return reference
        if self.world.distributed:  # the processes may have read different caches: compute alike
            missing = needed
        for split, indices in missing.items():
            if indices:
                reference[split][indices] = self._reference_logps(self.datasets[split], indices)
        if self.world.is_main:
            checkpoint.save_reference(self.output, reference, key)
        return reference

    @torch.no_grad()
    def _reference_logps(self, dataset: Dataset, indices: list[int]) -> torch.Tensor:
        """(len(indices), 2) reference log-probs of chosen and rejected of these examples, from
        the base (P bypassed).

        Each process computes every `size`-th of them; the sum over processes fills in the rest."""
        size = self.options.batch_size
        mine = list(range(self.world.rank, len(indices), self.world.size))
        logps = torch.zeros(len(indices), 2, device=self.device)
        log.info("reference log-probs of %d pairs (the base model's, for the DPO loss)", len(indices))
        bar = self._progress(range(0, len(mine), size), desc="reference log-probs", unit="batch")
        with bypass_pre_layer(self.model), self._autocast():
            for start in bar:
                rows = mine[start : start + size]
                batch = collate(
                    [dataset.examples[indices[row]] for row in rows], self.tokenizer.pad_token_id, self.device
                )
                sums, _ = response_logprobs(self.model, batch, self.chunk_tokens)
                logps[rows] = sums.view(2, -1).T
        return self.world.sum(logps).cpu()

    def _progress(self, iterable: Iterable | None = None, **settings: Any) -> tqdm:
        """A tqdm bar on a terminal; elsewhere (a log file, a pipe) none: no carriage returns
        fill the file, and `run` logs a line every LOG_EVERY_SHARE of the steps instead."""
        shown = self.options.progress and self.world.is_main and sys.stderr.isatty()
        return tqdm(iterable, file=sys.stderr, disable=not shown, **settings)

    # -- one forward ---------------------------------------------------------------------------------

    def _forward(self, split: str, indices: list[int]) -> tuple[torch.Tensor, dict, int]:
        """Summed loss of these examples of `split`, summed metric terms, and the count they are
        averaged over (pairs for DPO, response tokens for SFT)."""
        examples = [self.datasets[split].examples[i] for i in indices]
        batch = collate(examples, self.tokenizer.pad_token_id, self.device)
        with self._autocast():
            logps, counts = response_logprobs(self.model, batch, self.chunk_tokens)
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

    def _epoch_order(self, epoch: int) -> list[int]:
        """The examples of `epoch` in their seeded order, padded to a multiple of the processes as
        DistributedSampler does."""
        generator = torch.Generator().manual_seed(self.options.seed + epoch)
        order = torch.randperm(len(self.datasets["train"].examples), generator=generator).tolist()
        return order + order[: -len(order) % self.world.size]

    def _step_indices(self, step: int) -> tuple[list[int], list[int]]:
        """The examples of optimizer step `step` (a slice of its epoch's order) and this process's
        share of them."""
        epoch, position = divmod(step, self.steps_per_epoch)
        order = self._epoch_order(epoch)
        per_step = self.examples_per_step
        step_indices = order[position * per_step : (position + 1) * per_step]
        return step_indices, step_indices[self.world.rank :: self.world.size]

    def _policy(self) -> AbstractContextManager:
        """The training forward: through DDP's wrapper of P when there are several processes."""
        if self.trained_pre_layer is self.pre_layer:
            return nullcontext()
        return replaced_pre_layer(self.model, self.trained_pre_layer)

    def _reduce(self, sums: dict[str, float], total: float) -> dict:
        """Metric sums of this process, summed over all processes and averaged over `total`."""
        if not self.world.distributed:
            return {key: value / total for key, value in sums.items()}
        values = self.world.sum(torch.tensor(list(sums.values()), dtype=torch.float64, device=self.device))
        return {key: value / total for key, value in zip(sums, values.tolist(), strict=True)}

    def _train_step(self) -> dict:
        """One optimizer step over `grad_accum` micro-batches in each process; the loss is normalised
        over the whole step, so the result does not depend on how the step is split (DDP averages
        the processes' gradients, hence the factor world.size)."""
        step_indices, indices = self._step_indices(self.step)
        size = self.options.batch_size
        if self.options.objective == "dpo":
            total = len(step_indices)
        else:
            total = sum(len(self.datasets["train"].examples[i].responses[0]) for i in step_indices)
        sums: dict[str, float] = defaultdict(float)
        starts = range(0, len(indices), size)
        with self._policy():
            for start in starts:
                accumulating = start != starts[-1]
                with self.world.no_sync(self.trained_pre_layer, accumulating):
                    loss, terms, _ = self._forward("train", indices[start : start + size])
                    self.scaler.scale(loss * self.world.size / total).backward()
                for key, value in terms.items():
                    sums[key] += value
        self.scaler.unscale_(self.optimizer)
        grad_norm = torch.nn.utils.clip_grad_norm_(self.pre_layer.parameters(), MAX_GRAD_NORM)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        return self._reduce(sums, total) | {"grad_norm": grad_norm.item()}

    @torch.no_grad()
    def evaluate(self) -> dict:
        """Metrics of the current P on the eval set (the train-time definitions, averaged over it);
        each process takes every world.size-th example."""
        sums: dict[str, float] = defaultdict(float)
        units = 0
        count, size = len(self.datasets["eval"].examples), self.options.batch_size
        mine = list(range(self.world.rank, count, self.world.size))
        for start in range(0, len(mine), size):
            _, terms, batch_units = self._forward("eval", mine[start : start + size])
            units += batch_units
            for key, value in terms.items():
                sums[key] += value
        total = self.world.sum(torch.tensor([units], device=self.device)).item()
        return self._reduce(sums, total)

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
        if self.world.is_main:
            checkpoint.save_checkpoint(self.output, pre_layer_state(self.model), state, manifest)
        return manifest

    def _open_metrics(self) -> TextIO:
        """metrics.jsonl, cut back to the resumed step so it reads like one uninterrupted run
        (rank 0 only; the other processes write nowhere)."""
        if not self.world.is_main:
            return open(os.devnull, "w", encoding="utf-8")  # noqa: SIM115 (closed by run's `with`)
        path = self.output / checkpoint.METRICS_FILE
        kept = []
        if self.options.resume and path.is_file():
            kept = [line for line in path.read_text().splitlines() if json.loads(line)["step"] <= self.step]
        write_text(path, "".join(line + "\n" for line in kept))
        return path.open("a", encoding="utf-8")

    def run(self) -> TrainResult:
        """Train until `total_steps`, checkpointing as configured; export the HF layout if asked."""
        if self.options.objective == "dpo":
            self.reference = self._load_or_compute_reference()
        window: list[dict] = []
        eval_metrics = manifest = None
        started = time.monotonic()
        # Counted in examples (DPO: pairs), so the bar's rate is pairs/s and its ETA the run's end.
        bar = self._progress(
            total=self.total_steps * self.examples_per_step,
            initial=self.step * self.examples_per_step,
            desc=f"{self.options.objective} training",
            unit="pair" if self.options.objective == "dpo" else "example",
        )
        log_every = max(1, math.ceil(self.total_steps * LOG_EVERY_SHARE))
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
                lr = self.optimizer.param_groups[0]["lr"]  # this step's, from the schedule
                metrics = self._train_step()
                if self.on_step is not None:  # before the save: raising here keeps a bad P out of CKPT
                    self.on_step(self.options.objective, self.step, self.total_steps, metrics)
                window.append(metrics)
                record("train", metrics | {"lr": lr})
                bar.update(self.examples_per_step)
                bar.set_postfix(_postfix(metrics))
                if (
                    bar.disable
                    and self.options.progress
                    and (self.step % log_every == 0 or self.step == self.total_steps)
                ):
                    summary = ", ".join(f"{name} {value}" for name, value in _postfix(metrics).items())
                    log.info("step %d/%d: %s", self.step, self.total_steps, summary)
                if self.step % self.options.save_every == 0 or self.step == self.total_steps:
                    if "eval" in self.datasets:
                        eval_metrics = self.evaluate()
                        record("eval", eval_metrics)
                    manifest = self._save(window, eval_metrics)
                    window = []
        if manifest is None:  # nothing left to train (a resumed run that had finished): keep its files
            manifest = checkpoint.read_manifest(self.output)
        log.info("checkpoint saved in %s (step %d)", self.output, self.step)
        if self.options.export_hf and self.world.is_main:
            checkpoint.export_hf(self.model, self.tokenizer, Path(self.options.export_hf), self.options.force)
            log.info("expanded Hugging Face model written to %s", self.options.export_hf)
        return TrainResult(self.output, self.step, manifest["metrics"], manifest)


def _postfix(metrics: dict) -> dict:
    short = {"loss": "loss", "reward_accuracy": "acc", "reward_margin": "margin"}
    return {name: f"{metrics[key]:.4f}" for key, name in short.items() if key in metrics}


def train(
    base: str | Path,
    data: str | Path,
    output: str | Path,
    options: TrainOptions | None = None,
    *,
    on_step: StepCallback | None = None,
) -> TrainResult:
    """Train the CLM pre-layer on `base` with the JSONL `data`; write the checkpoint to `output`.

    `base` is a Hugging Face model folder or a GGUF file (families: gguf.keys.SUPPORTED_ARCHITECTURES),
    or `default`, the default model's base GGUF. Raises ClmError
    with a one-line message for every expected failure; bad inputs fail before anything slow, and a
    failed run leaves no empty output folder behind. Started by torchrun, it is one process of a
    data-parallel run (see `distributed.py`). `on_step(objective, step, total_steps, metrics)` hears
    every optimizer step (the step's train metrics); an exception it raises ends the run.
    """
    options = options or TrainOptions()
    check_inputs(base, data, options)
    with process_group(resolve_device(options.device)) as world:  # torchrun: one of several processes
        cleanup = removed_if_left_empty(Path(output)) if world.is_main else nullcontext()
        with cleanup:
            return Trainer(base, data, output, options, world, on_step=on_step).run()
