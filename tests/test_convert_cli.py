"""The `convert` and `info` commands as a user runs them: exit codes, one-line errors, the summary."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from test_convert_fixtures import tiny_pre_layer, write_checkpoint
from tiny_gguf import make_tiny_model


def clm_local(*args: str | Path) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "clm_local.cli.main", *map(str, args)]
    return subprocess.run(command, capture_output=True, text=True, timeout=120)


def test_convert_prints_a_summary_and_info_describes_the_file(tmp_path: Path) -> None:
    model = make_tiny_model("llama", n_base_blocks=2)
    base = model.write(tmp_path / "base.gguf", "base")
    checkpoint = write_checkpoint(tmp_path / "ckpt", tiny_pre_layer(model), base)
    out = tmp_path / "clm.gguf"

    done = clm_local("convert", checkpoint, out, "--outtype", "f16", "--alpha-default", "0.8")
    assert done.returncode == 0, done.stderr
    assert "converted the training checkpoint" in done.stdout
    assert "blocks        3 = 1 pre-layer + 2 base blocks" in done.stdout
    assert "defaults      alpha 0.8, mix logits" in done.stdout
    assert "training      objective = dpo, beta = 0.1, lr = 0.0001, epochs = 1, max_steps = 12" in done.stdout
    assert "step = 12" in done.stdout and "data.path = prefs.jsonl" in done.stdout

    described = clm_local("info", out, "--json")
    assert described.returncode == 0, described.stderr
    details = json.loads(described.stdout)
    assert details["n_pre_layers"] == 1
    assert details["pre_layer_types"] == {"F16": 7, "F32": 2}
    assert details["train"]["objective"] == "dpo"


def test_pre_layer_type_names_p_s_storage_type(tmp_path: Path) -> None:
    model = make_tiny_model("llama", n_base_blocks=2)
    base = model.write(tmp_path / "base.gguf", "base")
    checkpoint = write_checkpoint(tmp_path / "ckpt", tiny_pre_layer(model), base)
    done = clm_local("convert", checkpoint, tmp_path / "clm.gguf", "--pre-layer-type", "q8_0")
    assert done.returncode == 0, done.stderr
    details = json.loads(clm_local("info", tmp_path / "clm.gguf", "--json").stdout)
    assert details["pre_layer_types"] == {"Q8_0": 7, "F32": 2}


def test_failures_are_one_error_line_with_exit_code_1(tmp_path: Path) -> None:
    model = make_tiny_model("llama", n_base_blocks=2)
    clm_file = model.write(tmp_path / "clm.gguf", "clm")
    (tmp_path / "garbage.gguf").write_bytes(b"GGUF" + bytes(200))
    cases = [
        ("convert", clm_file, tmp_path / "out.gguf"),  # already a CLM file
        ("convert", tmp_path / "garbage.gguf", tmp_path / "out.gguf"),
        ("convert", clm_file, tmp_path / "out.gguf", "--outtype", "q4"),
        ("info", tmp_path / "missing.gguf"),
        ("info", tmp_path / "garbage.gguf"),
    ]
    for args in cases:
        done = clm_local(*args)
        assert done.returncode == 1, args
        assert done.stderr.startswith("error: "), done.stderr
        assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr, done.stderr
    assert not (tmp_path / "out.gguf").exists()
