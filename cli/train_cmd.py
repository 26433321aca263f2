"""`clm-local train BASE DATA -o CKPT`: train the CLM pre-layer (DPO or SFT) on a base model.

The work lives in clm_local.training; this module only maps options to TrainOptions. The options
and input files are checked (training/options.py, training/inputs.py, no torch) before the
trainer is imported, so a typo is reported in a fraction of a second, and `clm-local --help`
does not load torch either. Under torchrun
(`torchrun --nproc-per-node K -m clm_local.training ...`) every process runs this command; only
rank 0 prints.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from clm_local.gguf.keys import SUPPORTED_ARCHITECTURES


def register(app: typer.Typer) -> None:
    """Add `train` to the app."""
    app.command()(train)


def train(
    base: Annotated[
        Path,
        typer.Argument(
            help="Base model: a Hugging Face folder or a GGUF file (families: "
            f"{', '.join(SUPPORTED_ARCHITECTURES)}), or `default`: the default model's base GGUF.",
            show_default=False,
        ),
    ],
    data: Annotated[
        Path,
        typer.Argument(
            help="JSONL: prompt/chosen/rejected (DPO), prompt/completion or messages (SFT).",
            show_default=False,
        ),
    ],
    output: Annotated[
        Path, typer.Option("--output", "-o", help="Checkpoint folder to write (CKPT).", show_default=False)
    ],
    objective: Annotated[str, typer.Option(help="dpo or sft.")] = "dpo",
    beta: Annotated[float, typer.Option(help="DPO beta (strength of the pull towards the base).")] = 0.1,
    lr: Annotated[float, typer.Option(help="Peak learning rate (AdamW); see --lr-scheduler.")] = 1e-5,
    lr_scheduler: Annotated[
        str, typer.Option(help="constant, linear, cosine or constant_with_warmup (TRL's names).")
    ] = "constant",
    warmup_ratio: Annotated[
        float, typer.Option(help="Share of the steps that warm the lr up from 0 (not with constant).")
    ] = 0.0,
    epochs: Annotated[int, typer.Option(help="Passes over the data.")] = 1,
    max_steps: Annotated[
        int | None, typer.Option(help="Optimizer steps to run; overrides --epochs.", show_default=False)
    ] = None,
    batch_size: Annotated[
        int, typer.Option(help="Examples (DPO: pairs) per forward pass, in each torchrun process.")
    ] = 4,
    grad_accum: Annotated[int, typer.Option(help="Forward passes per optimizer step.")] = 1,
    max_length: Annotated[
        int, typer.Option(help="Longest prompt+response in tokens (TRL's rule: see --max-prompt-length).")
    ] = 1024,
    max_prompt_length: Annotated[
        int | None,
        typer.Option(
            help="Too long: keep the prompt's last this many tokens, then the answers' first "
            "max-length minus this many. Default: half of --max-length.",
            show_default=False,
        ),
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of the data order.")] = 0,
    device: Annotated[str, typer.Option(help="auto (cuda, then mps, then cpu), cpu, cuda or mps.")] = "auto",
    dtype: Annotated[
        str,
        typer.Option(
            help="The frozen base's dtype (P stays fp32): auto (bf16, fp16 on GPUs without bf16, "
            "fp32 on CPU), fp32, bf16, fp16."
        ),
    ] = "auto",
    gradient_checkpointing: Annotated[
        bool | None,
        typer.Option(
            "--gradient-checkpointing/--no-gradient-checkpointing",
            help="Recompute the frozen blocks in the backward pass (less memory, about 1/3 slower). "
            "Default: on for bases of 300M parameters and more.",
            show_default=False,
        ),
    ] = None,
    logprob_chunk_tokens: Annotated[
        int | None,
        typer.Option(
            help="Answer tokens per LM-head chunk (0: no chunking). Default: 256 MiB of fp32 logits.",
            show_default=False,
        ),
    ] = None,
    eval_data: Annotated[
        Path | None, typer.Option(help="JSONL evaluated at every checkpoint.", show_default=False)
    ] = None,
    save_every: Annotated[int, typer.Option(help="Checkpoint every this many steps (and at the end).")] = 100,
    resume: Annotated[
        bool, typer.Option(help="Continue the run saved in CKPT from its last checkpoint.")
    ] = False,
    force: Annotated[bool, typer.Option(help="Write into an existing CKPT / --export-hf folder.")] = False,
    skip_bad_lines: Annotated[
        bool, typer.Option(help="Skip malformed or incomplete JSONL lines instead of stopping.")
    ] = False,
    init_from: Annotated[
        Path | None,
        typer.Option(
            help="Start P from this checkpoint (e.g. DPO after SFT); ignored with --resume.",
            show_default=False,
        ),
    ] = None,
    export_hf: Annotated[
        Path | None,
        typer.Option(
            help="Also write the expanded HF model (N+1 blocks, block 0 = P) here.", show_default=False
        ),
    ] = None,
) -> None:
    """Add the identity pre-layer P to BASE and train only P on DATA; write P and a manifest to CKPT.

    Example, on the default model's base: clm-local train default prefs.jsonl -o ckpt/
    """
    from clm_local.training.inputs import check_inputs
    from clm_local.training.options import TrainOptions

    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger = logging.getLogger("clm_local")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)

    options = TrainOptions(
        objective=objective,
        beta=beta,
        lr=lr,
        epochs=epochs,
        max_steps=max_steps,
        batch_size=batch_size,
        grad_accum=grad_accum,
        max_length=max_length,
        max_prompt_length=max_prompt_length,
        lr_scheduler=lr_scheduler,
        warmup_ratio=warmup_ratio,
        gradient_checkpointing=gradient_checkpointing,
        logprob_chunk_tokens=logprob_chunk_tokens,
        seed=seed,
        device=device,
        dtype=dtype,
        eval_data=eval_data,
        save_every=save_every,
        resume=resume,
        force=force,
        skip_bad_lines=skip_bad_lines,
        export_hf=export_hf,
        init_from=init_from,
    )
    try:
        check_inputs(base, data, options)  # before the trainer's imports (torch: seconds)
        from clm_local.training import train as run_training

        if not sys.stderr.isatty():  # a log file or a pipe: no progress bars (the trainer logs lines)
            from transformers.utils import logging as transformers_logging

            transformers_logging.disable_progress_bar()

        result = run_training(base, data, output, options)
    finally:
        logger.removeHandler(handler)
    if os.environ.get("RANK", "0") != "0":
        return
    summary = ", ".join(f"{key} {value:.4f}" for key, value in result.metrics["train"].items())
    typer.echo(f"trained {result.step} steps; {summary}")
    typer.echo(f"checkpoint: {result.output}")
