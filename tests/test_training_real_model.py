"""Train on the real default base (SmolLM2-135M-Instruct, Q4_1 GGUF) when it is in the cache.

Skipped cleanly where the file is absent (CI); about 20 s on two CPU cores where it is present,
most of it transformers dequantizing the GGUF.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

from clm_local.training import TrainOptions, train

SMOLLM2 = Path.home() / ".cache/clm-local/models/SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.mark.skipif(not SMOLLM2.is_file(), reason=f"{SMOLLM2} not present")
def test_dpo_steps_on_the_smollm2_gguf(tmp_path):
    data = tmp_path / "pairs.jsonl"
    data.write_text(
        json.dumps({"prompt": "Say hello.", "chosen": "Hello! How can I help?", "rejected": "No."}) + "\n"
    )
    result = train(SMOLLM2, data, tmp_path / "ckpt", TrainOptions(max_steps=2, batch_size=1, progress=False))

    manifest = result.manifest
    assert (manifest["architecture"], manifest["base_block_count"], manifest["base"]["kind"]) == (
        "llama",
        30,
        "gguf",
    )
    tensors = load_file(tmp_path / "ckpt" / "pre_layer.safetensors")
    assert len(tensors) == 9  # q, k, v, o, gate, up, down, two norms
    assert tensors["model.layers.0.self_attn.k_proj.weight"].shape == (192, 576)
    assert math.isfinite(result.metrics["train"]["loss"])


@pytest.mark.skipif(not SMOLLM2.is_file(), reason=f"{SMOLLM2} not present")
def test_train_default_trains_on_the_default_models_base(tmp_path):
    """`clm-local train default DATA -o CKPT`, as a new user types it, from a folder with no file
    named `default`: the run is on the default model's base, and its log holds no progress bars."""
    data = tmp_path / "pairs.jsonl"
    pair = {"prompt": "Say hi.", "chosen": "Hi! How can I help?", "rejected": "No."}
    data.write_text(json.dumps(pair) + "\n")
    executable = Path(sys.executable).with_name("clm-local")
    result = subprocess.run(
        [executable, "train", "default", data, "-o", "ckpt", "--max-steps", "1", "--batch-size", "1"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr
    manifest = json.loads((tmp_path / "ckpt" / "clm_manifest.json").read_text())
    assert manifest["base"]["path"] == str(SMOLLM2.resolve())
    assert "\r" not in result.stderr and "step 1/1: loss" in result.stderr
