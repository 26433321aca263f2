"""Gradient checkpointing through the frozen blocks, and when it is on by default.

P sits below every block, so the backward pass runs through the whole frozen network and, plainly,
keeps every block's activations (attention and MLP intermediates) until the end of the step. With
checkpointing each frozen block keeps only its input hidden states; the backward recomputes the
block. That costs about one more forward pass of the frozen blocks per step and makes activation
memory nearly independent of the depth. P itself is not checkpointed (one block, and DDP's hooks
stay simple).

transformers' own switch (`gradient_checkpointing_enable`) only acts in training mode, and the
model stays in eval mode here (no dropout: the policy and the DPO reference must be the same
function apart from P), so the frozen blocks' forwards are wrapped directly.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

# Bases with at least this many parameters train with checkpointing unless told otherwise. Below it
# (SmolLM2-135M and other small models) activations are a few GB at most and the recompute would
# cost speed for nothing; from Qwen2.5-0.5B up they dominate (see the README's training table).
CHECKPOINTING_MIN_PARAMETERS = 300_000_000


def parameter_count(model: nn.Module) -> int:
    return sum(parameter.numel() for parameter in model.parameters())


def checkpointing_default(model: nn.Module) -> bool:
    """The `--gradient-checkpointing` default for this base: on from CHECKPOINTING_MIN_PARAMETERS."""
    return parameter_count(model) >= CHECKPOINTING_MIN_PARAMETERS


def _checkpointed(forward: Callable, *args: object, **kwargs: object) -> object:
    if not torch.is_grad_enabled():  # reference pass, evaluation, identity check: nothing to save
        return forward(*args, **kwargs)
    return checkpoint(forward, *args, use_reentrant=False, **kwargs)


def checkpoint_blocks(blocks: list[nn.Module]) -> None:
    """Recompute each of these blocks in the backward pass instead of keeping its activations.

    Only the instances' `forward` is replaced: module names, state dicts and exports are unchanged.
    """
    for block in blocks:
        block.forward = functools.partial(_checkpointed, block.forward)
