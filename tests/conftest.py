"""Fixtures shared by the test modules; each imports what it needs lazily, so that collecting the
suite stays fast and a module that does not train never imports torch."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

TINY_ARCHITECTURES = ("llama", "qwen2")


@pytest.fixture(scope="module")
def one_torch_thread() -> Iterator[None]:
    """Tiny models gain nothing from intra-op threads, and on a busy machine the threads wait on each
    other (a 25-step test took 20 s with two threads on a loaded 2-core machine, 0.2 s with one)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Tiny random Hugging Face models (Llama and Qwen2 layouts), built once per run."""
    from tiny_hf import make_tiny_model

    root = tmp_path_factory.mktemp("tiny")
    return {arch: make_tiny_model(root / arch, arch) for arch in TINY_ARCHITECTURES}


@pytest.fixture
def pairs(tmp_path: Path) -> Path:
    """A JSONL of preference pairs that a tiny model can learn to separate (tiny_hf.PAIRS)."""
    from tiny_hf import PAIRS, write_jsonl

    return write_jsonl(tmp_path / "pairs.jsonl", [dict(prompt=p, chosen=c, rejected=r) for p, c, r in PAIRS])
