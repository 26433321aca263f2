"""ExPO for `recipe compare`: full DPO extrapolated in weight space, one GGUF per alpha.

ExPO (Zheng et al. 2024, "Weak-to-Strong Extrapolation Expedites Alignment") moves every weight
along the line from the base model to the DPO model: theta = theta_base + alpha * (theta_dpo -
theta_base). Unlike CLM's alpha and the logit-level mix (DeRa), this alpha is fixed once the file is
written: each alpha is its own model, served as any plain GGUF.

theta_base is the base GGUF dequantized with gguf-py (`gguf.quants.dequantize`): the weights that
full DPO started from, since transformers loads a GGUF base through the same function
(full_dpo.py). theta_dpo is the full-DPO GGUF, which is F32. The result is F32 too (its size is
the full-DPO file's, 4 bytes a weight): the extrapolated update is as fine as DPO's, below a 4-bit
step. Tensor order, names and metadata are the full-DPO file's (the tied embedding stays one
tensor). Each tensor is computed as (1 - alpha) * theta_base + alpha * theta_dpo in float64 (the
same line, written so that alpha 0 gives the base's weights and alpha 1 the DPO weights exactly)
when the writer reaches it, so memory holds one tensor at a time.
"""

from __future__ import annotations

import functools
from pathlib import Path

import gguf
import numpy as np

from clm_local.converters.clm_metadata import check_gguf_source
from clm_local.converters.gguf_io import OutputTensor, copy_metadata, write_gguf
from clm_local.errors import ClmError
from clm_local.gguf.file import open_gguf

F32 = gguf.GGMLQuantizationType.F32


def dequantized(tensor: gguf.ReaderTensor) -> np.ndarray:
    """A GGUF tensor's weights as float32, in numpy order (outermost dimension first)."""
    return np.asarray(gguf.quants.dequantize(tensor.data, tensor.tensor_type), dtype=np.float32)


def extrapolated(base: np.ndarray, dpo: np.ndarray, alpha: float) -> np.ndarray:
    """theta_base + alpha * (theta_dpo - theta_base) as float32; exact at alpha 0 and 1."""
    line = (1.0 - alpha) * base.astype(np.float64) + alpha * dpo.astype(np.float64)
    return line.astype(np.float32)


def write_expo_gguf(base: Path, dpo: Path, alpha: float, out: Path) -> None:
    """`out`: the ExPO model at `alpha` from the base GGUF and the (F32) full-DPO GGUF of it."""
    base_reader, dpo_reader = open_gguf(base), open_gguf(dpo)
    arch = check_gguf_source(dpo_reader, dpo)
    base_tensors = {tensor.name: tensor for tensor in base_reader.tensors}
    tensors = []
    for tensor in dpo_reader.tensors:
        ne = tuple(int(n) for n in tensor.shape)
        origin = base_tensors.get(tensor.name)
        if origin is None or tuple(int(n) for n in origin.shape) != ne:
            raise ClmError(f"{base} has no tensor {tensor.name} of shape {ne}: {dpo} was not trained from it")
        if tensor.tensor_type != F32:
            raise ClmError(
                f"{dpo}: {tensor.name} is {tensor.tensor_type.name}; ExPO needs the F32 full-DPO file"
            )
        tensors.append(
            OutputTensor(tensor.name, ne, F32, functools.partial(expo_tensor, origin, tensor, alpha))
        )
    if len(base_tensors) != len(tensors):
        raise ClmError(f"{base} and {dpo} hold different tensor lists")
    write_gguf(out, arch, copy_metadata(dpo_reader, {}), tensors, force=True)


def expo_tensor(base: gguf.ReaderTensor, dpo: gguf.ReaderTensor, alpha: float) -> np.ndarray:
    """One tensor of the ExPO model at `alpha`, from the base's and the full-DPO file's tensor."""
    weights = extrapolated(dequantized(base), np.asarray(dpo.data, dtype=np.float32), alpha)
    return weights.reshape(np.asarray(dpo.data).shape)
