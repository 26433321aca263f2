"""benchmarks/large_shapes.py builds what it promises: a random base in a given shape, quantized by
llama.cpp (Q4_K_M's mix of types, the tied head in Q6_K), its vocabulary padded to the shape's
size, and a random P grafted as block 0, which the runtime loads in both modes.

A tiny shape (hidden 256, the smallest K-quant row) keeps it to seconds; the 1B and 3B shapes
differ only in their numbers.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import gguf
import numpy as np
from clm_local.benchmarks import large_shapes

import clm_local

TINY = large_shapes.Shape("Tiny", n_embd=256, n_blocks=2, n_ff=512, n_head=4, n_head_kv=2, head_dim=64,
                          n_vocab=50000)  # fmt: skip


def test_a_tiny_shape_builds_quantizes_grafts_and_runs(tmp_path: Path) -> None:
    clm = large_shapes.build(TINY, "Q4_K_M", "auto", tmp_path, progress=lambda line: None)
    base = large_shapes.base_path(TINY, "Q4_K_M", tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([base.name, clm.name])  # no F16 left

    reader = gguf.GGUFReader(str(clm))
    types = {t.name: t.tensor_type.name for t in reader.tensors}
    assert types["token_embd.weight"] == "Q6_K"  # the tied head, as llama.cpp quantizes it
    assert "output.weight" not in types
    assert {types[f"blk.0.{name}.weight"] for name in large_shapes.block_matrices(TINY)} == {"F32"}  # P
    assert Counter(types[f"blk.{i}.attn_q.weight"] for i in (1, 2)) == {"Q4_K": 2}
    assert reader.fields["llama.block_count"].contents() == TINY.n_blocks + 1
    assert reader.fields["llama.vocab_size"].contents() == TINY.n_vocab
    assert len(reader.fields["tokenizer.ggml.tokens"].data) == TINY.n_vocab
    assert reader.fields["clm.pre_layer_count"].contents() == 1

    with clm_local.load(clm, n_ctx=64) as model:
        assert model.n_vocab == TINY.n_vocab
        tokens = model.tokenize("Hello there, how are you?", add_special=False)
        for mode in ("logits", "embed"):
            logits = model.logits(tokens, alpha=0.8, mode=mode)
            assert logits.shape == (len(tokens), TINY.n_vocab)
            assert np.isfinite(logits).all() and logits.std() > 0

    # A second call finds both files and rebuilds nothing.
    assert large_shapes.build(TINY, "Q4_K_M", "auto", tmp_path, progress=lambda line: None) == clm
