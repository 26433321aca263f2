"""Where teach keeps its files: one data folder the user can see, a sub-folder per served base.

Why per base: a preference pair is only meaningful for training against the base model whose
answers were judged, and a P only runs on the exact base it was trained on. Every model the
server may switch between (the base itself, the default CLM model, each trained dial) shares a
base, so they share one folder: its pairs, its dials, its log.

    DATA/                          --data-dir; default $XDG_DATA_HOME/clm-local or ~/.local/share/clm-local
      hashes.json                  sha256 of plain GGUFs already hashed (by path, size, mtime)
      <base id>/                   e.g. SmolLM2-135M-Instruct-b179c9523d0e
        preferences.jsonl          every labelled pair, appended, never rewritten
        dials.json                 the registry of trained preferences
        dials/<name>/              one training run: spec.json, ckpt/, <file>.gguf, report.json
        base.json                  where the base GGUF was last found (so training finds it again)
        teach.log                  every training process's stderr, appended
        train.lock                 held by the training process: one job per folder, across servers
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

DATA_DIR_VARIABLE = "XDG_DATA_HOME"


def default_data_dir() -> Path:
    """`$XDG_DATA_HOME/clm-local`, else `~/.local/share/clm-local` (the XDG base directory rule:
    data the user keeps, unlike the cache, which clm-local may rebuild)."""
    root = os.environ.get(DATA_DIR_VARIABLE) or str(Path.home() / ".local" / "share")
    return Path(root) / "clm-local"


@dataclass(frozen=True)
class BaseFolder:
    """The files of one base inside the data folder (nothing is created until used)."""

    root: Path

    @property
    def preferences(self) -> Path:
        return self.root / "preferences.jsonl"

    @property
    def registry(self) -> Path:
        return self.root / "dials.json"

    @property
    def dials(self) -> Path:
        return self.root / "dials"

    @property
    def base_record(self) -> Path:
        return self.root / "base.json"

    @property
    def log(self) -> Path:
        return self.root / "teach.log"

    @property
    def lock(self) -> Path:
        return self.root / "train.lock"

    def dial(self, name: str) -> Path:
        return self.dials / name
