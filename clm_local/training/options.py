"""The options of a training run (`clm-local train`'s, same names and defaults) and their checks.

Kept apart from the trainer, without torch: the CLI checks a run's options (and its input files,
training/inputs.py) in a fraction of a second, before the heavy imports of the trainer.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from clm_local.errors import ClmError

OBJECTIVES = ("dpo", "sft")
# transformers' (and so TRL's) names; "constant" ignores warmup there, as it does here.
LR_SCHEDULERS = ("constant", "linear", "cosine", "constant_with_warmup")


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
    max_prompt_length: int | None = None  # TRL's; None: half of max_length
    lr_scheduler: str = "constant"
    warmup_ratio: float = 0.0
    gradient_checkpointing: bool | None = None  # None: on for bases from memory.CHECKPOINTING_MIN_PARAMETERS
    logprob_chunk_tokens: int | None = None  # None: objectives.auto_chunk_tokens; 0: no chunking
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
            (
                self.max_prompt_length is None or 1 <= self.max_prompt_length < self.max_length,
                "--max-prompt-length must be at least 1 and less than --max-length",
            ),
            (self.lr_scheduler in LR_SCHEDULERS, f"--lr-scheduler must be one of {', '.join(LR_SCHEDULERS)}"),
            (0 <= self.warmup_ratio < 1, "--warmup-ratio must be at least 0 and less than 1"),
            (
                self.warmup_ratio == 0 or self.lr_scheduler != "constant",
                "--lr-scheduler constant has no warmup (as in TRL): use constant_with_warmup",
            ),
            (
                self.logprob_chunk_tokens is None or self.logprob_chunk_tokens >= 0,
                "--logprob-chunk-tokens must be 0 (no chunking) or positive",
            ),
            (self.save_every >= 1, "--save-every must be at least 1"),
        ]
        for ok, message in checks:
            if not ok:
                raise ClmError(message)
