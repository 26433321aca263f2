"""Pick the device and the compute dtype from the `--device` / `--dtype` options."""

from __future__ import annotations

import torch

from clm_local.errors import ClmError

DEVICES = ("auto", "cpu", "cuda", "mps")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_device(name: str) -> torch.device:
    """`auto` prefers CUDA, then Apple MPS, then the CPU; an explicit choice must be available."""
    if name not in DEVICES:
        raise ClmError(f"unknown device '{name}' (choose from {', '.join(DEVICES)})")
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ClmError("--device cuda was asked for, but torch sees no CUDA GPU")
    if name == "mps" and not torch.backends.mps.is_available():
        raise ClmError("--device mps was asked for, but torch sees no Apple MPS device")
    return torch.device(name)


def _supports_bf16(device: torch.device) -> bool:
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "mps":
        try:  # bf16 on MPS depends on the macOS version; asking is the reliable test.
            torch.ones(1, dtype=torch.bfloat16, device=device)
        except (RuntimeError, TypeError):
            return False
        return True
    return False


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """The frozen base's dtype (P and its optimizer state are float32 whatever this is).

    `auto`: on CUDA and MPS bf16, or fp16 where the device has no bf16 (older GPUs and macOS
    versions; losses are then scaled); on the CPU fp32, which is faster there than bf16 (see the
    README's training table) -- pass `--dtype bf16` to halve the base's memory instead.
    """
    if name == "auto":
        if device.type == "cpu":
            return torch.float32
        return torch.bfloat16 if _supports_bf16(device) else torch.float16
    if name not in DTYPES:
        raise ClmError(f"unknown dtype '{name}' (choose from auto, {', '.join(DTYPES)})")
    return DTYPES[name]


def dtype_name(dtype: torch.dtype) -> str:
    """The short name (`bf16`) used in options and in the manifest."""
    return next(name for name, value in DTYPES.items() if value == dtype)
