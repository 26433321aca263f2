"""Training the CLM pre-layer (issue #3): `train(base, data, output, TrainOptions(...))`.

Modules, one job each: `options` (TrainOptions and their checks), `inputs` (the checks of a run's
files), `base_model` (find, identify and load the base), `devices` (device and dtype choice),
`clm_block` (insert P, identity check, bypass for the reference), `data` (JSONL to padded
batches), `objectives` (log-probs, DPO), `checkpoint` (CKPT folder, manifest, HF export),
`trainer` (the run itself).

Only `trainer` and the modules it loads import torch: the names below are looked up on first use,
so that `options` and `inputs` (the CLI's checks) answer without loading it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from clm_local.training.options import TrainOptions

if TYPE_CHECKING:
    from clm_local.training.trainer import Trainer, TrainResult, train

__all__ = ["TrainOptions", "TrainResult", "Trainer", "train"]


def __getattr__(name: str) -> Any:
    if name in ("Trainer", "TrainResult", "train"):
        from clm_local.training import trainer

        return getattr(trainer, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
