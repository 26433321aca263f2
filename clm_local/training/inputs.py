"""Refuse a training run's bad inputs in a second, before anything slow runs or any file is made.

`train()` calls `check_inputs` first: the options; the base (a GGUF is validated by
clm_local.gguf.check, and refused if it already is a CLM file); the training and eval data (read
and validated, encoding included, without a tokenizer). Loading the tokenizer and the model takes
seconds to minutes, so a typo in the data must not wait for them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from clm_local.errors import ClmError
from clm_local.gguf.check import check_gguf
from clm_local.gguf.keys import KEY_PRE_LAYER_COUNT
from clm_local.training.base_model import resolve_base
from clm_local.training.data import check_data
from clm_local.training.options import TrainOptions


def check_inputs(base: str | Path, data: str | Path, options: TrainOptions) -> None:
    """ClmError for the first input that cannot work; reads no weights and creates nothing."""
    options.validate()
    source = resolve_base(base)
    if source.kind == "gguf":
        header = check_gguf(source.path)
        if KEY_PRE_LAYER_COUNT in header.values:
            raise ClmError(
                f"{source.path} already has a pre-layer ({KEY_PRE_LAYER_COUNT} = "
                f"{header.values[KEY_PRE_LAYER_COUNT]}): train on the base model it was made from, "
                "and pass the checkpoint of that pre-layer with --init-from to train it further"
            )
    check_data(data, options.objective, options.skip_bad_lines)
    if options.eval_data:
        check_data(options.eval_data, options.objective, options.skip_bad_lines)


@contextlib.contextmanager
def removed_if_left_empty(folder: Path) -> Iterator[None]:
    """Remove `folder` when the body fails and leaves it empty, if the body created it."""
    existed = folder.exists()
    try:
        yield
    except BaseException:
        if not existed and folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()
        raise
