"""Training the CLM pre-layer (issue #3): `train(base, data, output, TrainOptions(...))`.

Modules, one job each: `base_model` (find, identify and load the base), `devices` (device and
dtype choice), `clm_block` (insert P, identity check, bypass for the reference), `data` (JSONL to
padded batches), `objectives` (log-probs, DPO), `checkpoint` (CKPT folder, manifest, HF export),
`trainer` (the run itself).
"""

from clm_local.training.trainer import Trainer, TrainOptions, TrainResult, train

__all__ = ["TrainOptions", "TrainResult", "Trainer", "train"]
