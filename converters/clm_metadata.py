"""The clm.* keys every converted file gets, and the checks every source must pass first.

The key names live in clm_local.gguf.keys (the contract with the runtime); this module decides
their GGUF types and refuses sources that cannot become a CLM file.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path

import gguf
from gguf import GGUFValueType

from clm_local.errors import ClmError
from clm_local.gguf.file import field_value
from clm_local.gguf.keys import (
    CLM_VERSION,
    KEY_ALPHA_DEFAULT,
    KEY_MIX_DEFAULT,
    KEY_PRE_LAYER_COUNT,
    KEY_VERSION,
    MIX_MODES,
    PREFIX_BASE,
    PREFIX_TRAIN,
    SUPPORTED_ARCHITECTURES,
)

from .gguf_io import MetadataEntry, require_value

# Provenance values are what a manifest or config holds: text, numbers, flags.
Provenance = Mapping[str, object]


def check_architecture(arch: str, source: Path) -> None:
    if arch not in SUPPORTED_ARCHITECTURES:
        supported = ", ".join(SUPPORTED_ARCHITECTURES)
        raise ClmError(f"{source}: architecture '{arch}' is not supported (supported: {supported})")


def check_gguf_source(reader: gguf.GGUFReader, source: Path) -> str:
    """The architecture of a GGUF that is to become a CLM file, after refusing what cannot.

    Refused: an unsupported architecture; a split file (only its first part could be read, so the
    output would silently lack tensors); a file that is already a CLM file (inserting again would
    stack two pre-layers).
    """
    arch = str(require_value(reader, gguf.Keys.General.ARCHITECTURE, source))
    check_architecture(arch, source)
    if (field_value(reader, gguf.Keys.Split.LLM_KV_SPLIT_COUNT) or 1) > 1:
        raise ClmError(f"{source} is one part of a split GGUF; merge it first (llama-gguf-split --merge)")
    pre_layers = field_value(reader, KEY_PRE_LAYER_COUNT)
    if pre_layers is not None:
        raise ClmError(
            f"{source} already has a pre-layer ({KEY_PRE_LAYER_COUNT} = {pre_layers}): "
            "it is a CLM file, and a second pre-layer is not supported"
        )
    return arch


def check_defaults(alpha_default: float, mix_default: str) -> None:
    if not math.isfinite(alpha_default):
        raise ClmError(f"--alpha-default must be a finite number (got {alpha_default})")
    if mix_default not in MIX_MODES:
        raise ClmError(f"--mix-default must be one of {', '.join(MIX_MODES)} (got {mix_default!r})")


def clm_entries(
    *,
    pre_layers: int,
    alpha_default: float,
    mix_default: str,
    base: Provenance | None = None,
    train: Provenance | None = None,
) -> list[MetadataEntry]:
    """The clm.* entries: format version, pre-layer count, defaults, then provenance.

    `base` and `train` become clm.base.<key> and clm.train.<key>; nested names use dots.
    """
    if pre_layers < 1:
        raise ClmError(f"--pre-layers must be at least 1 (got {pre_layers})")
    check_defaults(alpha_default, mix_default)
    entries = [
        MetadataEntry(KEY_VERSION, CLM_VERSION, GGUFValueType.UINT32),
        MetadataEntry(KEY_PRE_LAYER_COUNT, pre_layers, GGUFValueType.UINT32),
        MetadataEntry(KEY_ALPHA_DEFAULT, float(alpha_default), GGUFValueType.FLOAT32),
        MetadataEntry(KEY_MIX_DEFAULT, mix_default, GGUFValueType.STRING),
    ]
    for prefix, values in ((PREFIX_BASE, base), (PREFIX_TRAIN, train)):
        for key, value in (values or {}).items():
            entries.append(provenance_entry(prefix + key, value))
    return entries


def provenance_entry(key: str, value: object) -> MetadataEntry:
    """A provenance value as the closest GGUF type: bool, int64, float64 or string (JSON if
    it is a list or mapping, so nothing is lost)."""
    if isinstance(value, bool):
        return MetadataEntry(key, value, GGUFValueType.BOOL)
    if isinstance(value, int):
        return MetadataEntry(key, value, GGUFValueType.INT64)
    if isinstance(value, float):
        return MetadataEntry(key, value, GGUFValueType.FLOAT64)
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
    return MetadataEntry(key, text, GGUFValueType.STRING)


def flatten(values: Mapping[str, object], prefix: str = "") -> dict[str, object]:
    """Nested mappings as dotted keys ({"data": {"path": p}} -> {"data.path": p}); None dropped."""
    flat: dict[str, object] = {}
    for key, value in values.items():
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{prefix}{key}."))
        elif value is not None:
            flat[f"{prefix}{key}"] = value
    return flat
