"""The converter's view of a training checkpoint's clm_manifest.json.

The fields are documented in clm_local/training/checkpoint.py (format "clm-local-pre-layer",
version 1); that module is not imported here because it needs torch, and the graft must not.
The manifest records which base P was trained on, by path and sha256, and how it was trained.
The graft uses the first to find and verify the base (P is only meaningful on top of the exact
blocks it was trained with) and copies the second into the output as clm.train.* provenance.
"""

from __future__ import annotations

import json
import ntpath
import posixpath
import sys
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from clm_local.errors import ClmError

from .clm_metadata import flatten

MANIFEST_FILE = "clm_manifest.json"
PRE_LAYER_FILE = "pre_layer.safetensors"
FORMAT = "clm-local-pre-layer"
FORMAT_VERSION = 1

# Fields that describe the file layout rather than the training run: not provenance.
_LAYOUT_FIELDS = (
    "format", "format_version", "architecture", "base_block_count", "pre_layer_count",
    "pre_layer_file", "tensor_prefix", "dtype", "base",
)  # fmt: skip
# Groups whose fields become clm.train.<field> directly (clm.train.beta, clm.train.step, ...).
_HOISTED_GROUPS = ("hyperparameters", "progress")


@dataclass(frozen=True)
class Manifest:
    architecture: str
    base_block_count: int
    pre_layer_file: str
    base_path: Path | None
    base_kind: str | None  # "gguf" (one file) or "hf" (a folder)
    base_sha256: frozenset[str]  # of the base's weight files
    train: dict[str, object]  # flat provenance for clm.train.*

    def base_gguf(self) -> Path:
        """The GGUF the checkpoint was trained on, when no --base was given."""
        if self.base_kind != "gguf" or self.base_path is None:
            raise ClmError(
                f"the checkpoint was trained on {self.base_path or 'an unrecorded base'}, not a GGUF file; "
                "pass --base with a GGUF of that model"
            )
        if not self.base_path.is_file():
            raise ClmError(f"the base recorded in the checkpoint, {self.base_path}, is gone; pass --base")
        return self.base_path

    def check_base(self, base: Path, arch: str, n_blocks: int, sha256: str, *, force: bool) -> None:
        """Refuse a base other than the one P was trained on: another family always, else unless forced."""
        if arch != self.architecture:
            raise ClmError(
                f"{base} is a {arch} model; this checkpoint was trained on a {self.architecture} model"
            )
        if sha256 in self.base_sha256 and n_blocks == self.base_block_count:
            return
        message = f"{base} is not the base this checkpoint was trained on ({self.base_path or 'unrecorded'}; "
        message += (
            "sha256 differs)" if n_blocks == self.base_block_count else f"{self.base_block_count} blocks)"
        )
        if not force:
            raise ClmError(message + "; use --force-base to graft anyway")
        print(f"warning: {message}; grafting anyway (--force-base)", file=sys.stderr)


def read(checkpoint: Path) -> Manifest:
    path = checkpoint / MANIFEST_FILE
    if not path.is_file():
        raise ClmError(f"{checkpoint} has no {MANIFEST_FILE}: not a complete training checkpoint")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ClmError(f"{path} is not valid JSON ({error})") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ClmError(f"{path} is not a {FORMAT} manifest")
    if data.get("format_version") != FORMAT_VERSION:
        raise ClmError(
            f"{path} has format version {data.get('format_version')}; this converter reads {FORMAT_VERSION}"
        )
    try:
        base = data["base"]
        manifest = Manifest(
            architecture=str(data["architecture"]),
            base_block_count=int(data["base_block_count"]),
            pre_layer_file=str(data.get("pre_layer_file", PRE_LAYER_FILE)),
            base_path=Path(base["path"]) if base.get("path") else None,
            base_kind=base.get("kind"),
            base_sha256=frozenset(f["sha256"] for f in base.get("files") or []),
            train=_provenance(data),
        )
    except (KeyError, TypeError, ValueError) as error:
        raise ClmError(f"{path} lacks or garbles a field ({type(error).__name__}: {error})") from None
    if data.get("pre_layer_count", 1) != 1:
        raise ClmError(f"{path}: {data['pre_layer_count']} pre-layers; CLM files hold exactly one")
    return manifest


def _provenance(data: dict) -> dict[str, object]:
    """The run's fields, the objective and the hoisted groups first (the most telling)."""
    run = {"objective": data.get("objective")}
    for group in _HOISTED_GROUPS:
        run.update(data.get(group) or {})
    run.update((k, v) for k, v in data.items() if k not in _LAYOUT_FIELDS + _HOISTED_GROUPS + ("objective",))
    return {key: _file_name_only(value) for key, value in flatten(run).items()}


def _file_name_only(value: object) -> object:
    """An absolute path of the training machine as its file name: the GGUF travels, and the folder
    layout (user names included) of the machine that trained it is nobody else's business."""
    if isinstance(value, str) and (posixpath.isabs(value) or ntpath.isabs(value)):
        return PurePosixPath(value.replace("\\", "/")).name
    return value
