"""Path (a): grafting a checkpoint's P into a base GGUF (no runtime needed).

The tiny models give an exact oracle: tiny_gguf's "clm" variant is by construction the file a
correct graft of its P onto its "base" variant must produce, tensor for tensor.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import time
from pathlib import Path

import gguf
import numpy as np
import pytest
from clm_local.converters.convert import ConvertOptions, convert
from clm_local.converters.gguf_io import copy_metadata, copy_tensor, write_gguf
from safetensors.numpy import save_file
from test_convert_fixtures import (
    quantize_file,
    raw_fields,
    require_smollm2,
    sha256,
    smollm2_identity_checkpoint,
    tiny_pre_layer,
    value,
    write_checkpoint,
)
from tiny_gguf import TinyModel, make_tiny_model

from clm_local.errors import ClmError

Q8_0 = gguf.GGMLQuantizationType.Q8_0
F16 = gguf.GGMLQuantizationType.F16
F32 = gguf.GGMLQuantizationType.F32


def _setup(tmp_path: Path, arch: str = "llama", **hparams: int) -> tuple[TinyModel, Path, Path]:
    """A tiny model, its base file, and a checkpoint holding its (random, trained-looking) P."""
    model = make_tiny_model(arch, n_base_blocks=2, **hparams)
    base = model.write(tmp_path / "base.gguf", "base")
    checkpoint = write_checkpoint(tmp_path / "ckpt", tiny_pre_layer(model), base)
    return model, base, checkpoint


def _graft(checkpoint: Path, out: Path, **options: object) -> None:
    convert(checkpoint, out, ConvertOptions(**options))


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_graft_produces_the_clm_layout(tmp_path: Path, arch: str) -> None:
    model, base, checkpoint = _setup(tmp_path, arch)
    out = tmp_path / "clm.gguf"
    _graft(checkpoint, out, alpha_default=0.75, mix_default="embed")

    reader = gguf.GGUFReader(out)
    expected = model.variant_tensors("clm")
    assert [t.name for t in reader.tensors if t.name.startswith("blk.0.")] == [
        f"blk.0.{k}" for k in model.pre_layer
    ]
    assert {t.name for t in reader.tensors} == set(expected)
    for tensor in reader.tensors:
        assert tensor.tensor_type == F32, tensor.name  # auto keeps P's F32; the F32 base is copied
        np.testing.assert_array_equal(np.asarray(tensor.data), expected[tensor.name], err_msg=tensor.name)

    assert value(reader, f"{arch}.block_count") == 3
    assert value(reader, "clm.version") == 1
    assert value(reader, "clm.pre_layer_count") == 1
    assert value(reader, "clm.alpha_default") == pytest.approx(0.75)
    assert value(reader, "clm.mix_default") == "embed"
    assert value(reader, "clm.base.sha256") == sha256(base)
    assert value(reader, "clm.base.name") == "clm-tiny-base"  # the base's general.name
    assert value(reader, "clm.train.objective") == "dpo"
    assert value(reader, "clm.train.beta") == pytest.approx(0.1)
    assert value(reader, "clm.train.step") == 12
    assert value(reader, "clm.train.data.examples") == 40
    assert value(reader, "clm.train.metrics.train.loss") == pytest.approx(0.61)
    assert value(reader, "clm.train.finished") is True
    assert reader.get_field("clm.train.init_from") is None  # null values are left out

    # Every base key is kept byte for byte; only the block count and the name change.
    before, after = raw_fields(gguf.GGUFReader(base)), raw_fields(reader)
    changed = {k for k in before if before[k] != after.get(k)}
    assert changed == {f"{arch}.block_count", "general.name"}
    assert value(reader, "general.name") == "clm-tiny-base + CLM ckpt"  # told apart from the base


def test_the_grafted_model_is_named_after_its_checkpoint_or_as_asked(tmp_path: Path) -> None:
    _, base, checkpoint = _setup(tmp_path)
    renamed = checkpoint.rename(tmp_path / "polite-v2")
    _graft(renamed, tmp_path / "derived.gguf")
    derived = gguf.GGUFReader(tmp_path / "derived.gguf")
    assert value(derived, "general.name") == "clm-tiny-base + CLM polite-v2"
    _graft(renamed, tmp_path / "named.gguf", name="Polite tiny")
    assert value(gguf.GGUFReader(tmp_path / "named.gguf"), "general.name") == "Polite tiny"
    with pytest.raises(ClmError, match="--name applies to training checkpoints only"):
        _graft(base, tmp_path / "other.gguf", name="x")


def test_graft_onto_a_quantized_base_keeps_every_base_byte(tmp_path: Path) -> None:
    _, f32_base, _ = _setup(tmp_path)
    base = quantize_file(f32_base, tmp_path / "base-q8.gguf")
    model = make_tiny_model("llama", n_base_blocks=2)
    checkpoint = write_checkpoint(tmp_path / "ckpt-q8", tiny_pre_layer(model), base)
    out = tmp_path / "clm.gguf"
    _graft(checkpoint, out)

    source = {t.name: t for t in gguf.GGUFReader(base).tensors}
    grafted = {t.name: t for t in gguf.GGUFReader(out).tensors}
    for name, tensor in source.items():
        parts = name.split(".")
        new_name = f"blk.{int(parts[1]) + 1}.{'.'.join(parts[2:])}" if parts[0] == "blk" else name
        assert grafted[new_name].tensor_type == tensor.tensor_type
        assert grafted[new_name].data.tobytes() == tensor.data.tobytes(), name
    assert grafted["blk.0.attn_q.weight"].tensor_type == F32  # P stays as trained
    assert source["blk.0.attn_q.weight"].tensor_type == Q8_0


@pytest.mark.parametrize(
    ("outtype", "matrix_type"),
    [("f32", F32), ("f16", F16), ("bf16", gguf.GGMLQuantizationType.BF16), ("q8_0", Q8_0)],
)
def test_outtype_sets_the_type_of_p_and_keeps_norms_f32(tmp_path: Path, outtype: str, matrix_type) -> None:
    model, _, checkpoint = _setup(tmp_path, "qwen2")
    out = tmp_path / "clm.gguf"
    _graft(checkpoint, out, outtype=outtype)
    tensors = {t.name: t for t in gguf.GGUFReader(out).tensors if t.name.startswith("blk.0.")}
    for name, tensor in tensors.items():
        expected_type = F32 if len(tensor.shape) == 1 else matrix_type
        assert tensor.tensor_type == expected_type, name
        decoded = gguf.quants.dequantize(tensor.data, tensor.tensor_type).reshape(
            model.pre_layer[name[6:]].shape
        )
        np.testing.assert_allclose(decoded, model.pre_layer[name[6:]], atol=0.02, err_msg=name)


def test_q8_0_falls_back_to_f16_for_rows_that_are_not_whole_blocks(tmp_path: Path) -> None:
    _, _, checkpoint = _setup(tmp_path, n_embd=48, n_head=4, n_head_kv=2, n_ff=96)  # 48 % 32 != 0
    out = tmp_path / "clm.gguf"
    _graft(checkpoint, out, outtype="q8_0")
    types = {t.name: t.tensor_type for t in gguf.GGUFReader(out).tensors}
    assert types["blk.0.attn_q.weight"] == F16  # rows of 48 values
    assert types["blk.0.ffn_down.weight"] == Q8_0  # rows of 96 values


def test_graft_smollm2_q4_keeps_the_base_and_is_quick(tmp_path: Path) -> None:
    base = require_smollm2()
    checkpoint = smollm2_identity_checkpoint(tmp_path / "ckpt")
    out = tmp_path / "smollm2-clm.gguf"
    started = time.perf_counter()
    _graft(checkpoint, out)
    elapsed = time.perf_counter() - started

    source, grafted = gguf.GGUFReader(base), gguf.GGUFReader(out)
    by_name = {t.name: t for t in grafted.tensors}
    for tensor in source.tensors:
        parts = tensor.name.split(".")
        new_name = f"blk.{int(parts[1]) + 1}.{'.'.join(parts[2:])}" if parts[0] == "blk" else tensor.name
        assert by_name[new_name].tensor_type == tensor.tensor_type
        assert by_name[new_name].data.tobytes() == tensor.data.tobytes(), tensor.name
    before, after = raw_fields(source), raw_fields(grafted)
    assert {k for k in before if before[k] != after[k]} == {"llama.block_count", "general.name"}
    assert value(grafted, "general.name") == f"{value(source, 'general.name')} + CLM ckpt"
    assert value(grafted, "llama.block_count") == 31
    assert len(grafted.tensors) == len(source.tensors) + 9
    assert elapsed < 30, f"graft took {elapsed:.1f} s"


# --- refusals: one plain ClmError line, and the output is neither created nor changed ----------


def _refused(checkpoint: Path, out: Path, match: str, **options: object) -> None:
    before = out.read_bytes() if out.exists() else None
    with pytest.raises(ClmError, match=match):
        _graft(checkpoint, out, **options)
    assert (out.read_bytes() if out.exists() else None) == before
    assert not [p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")]  # no temp file


def test_refuses_a_base_other_than_the_trained_one_unless_forced(tmp_path: Path, capsys) -> None:
    model, base, _ = _setup(tmp_path)
    checkpoint = write_checkpoint(tmp_path / "other", tiny_pre_layer(model), base, base_sha256="0" * 64)
    out = tmp_path / "clm.gguf"
    _refused(checkpoint, out, "not the base this checkpoint was trained on.*--force-base")
    _graft(checkpoint, out, force_base=True)
    assert "grafting anyway" in capsys.readouterr().err
    assert out.is_file()


def test_refuses_a_base_that_already_has_a_pre_layer(tmp_path: Path) -> None:
    model, _, _ = _setup(tmp_path)
    clm_file = model.write(tmp_path / "already.gguf", "clm")
    checkpoint = write_checkpoint(tmp_path / "ckpt2", tiny_pre_layer(model), clm_file)
    _refused(checkpoint, tmp_path / "out.gguf", "already has a pre-layer")


def test_refuses_p_whose_shapes_do_not_match_the_base(tmp_path: Path) -> None:
    _, base, _ = _setup(tmp_path)
    other = make_tiny_model("llama", n_ff=96)
    checkpoint = write_checkpoint(tmp_path / "wide", tiny_pre_layer(other), base)
    _refused(
        checkpoint,
        tmp_path / "out.gguf",
        r"mlp.gate_proj.weight has shape \(96, 64\), the base's is \(128, 64\)",
    )


def test_refuses_p_missing_a_tensor_or_carrying_an_extra_one(tmp_path: Path) -> None:
    model, base, _ = _setup(tmp_path)
    missing = tiny_pre_layer(model)
    del missing["model.layers.0.mlp.up_proj.weight"]
    _refused(
        write_checkpoint(tmp_path / "a", missing, base), tmp_path / "out.gguf", "lacks blk.0.ffn_up.weight"
    )

    extra = tiny_pre_layer(model) | {"model.layers.0.self_attn.q_proj.bias": np.zeros(64, np.float32)}
    _refused(write_checkpoint(tmp_path / "b", extra, base), tmp_path / "out.gguf", "has no .*q_proj.bias")

    other_block = tiny_pre_layer(model) | {
        "model.layers.1.mlp.up_proj.weight": np.zeros((128, 64), np.float32)
    }
    _refused(
        write_checkpoint(tmp_path / "c", other_block, base), tmp_path / "out.gguf", "only model.layers.0"
    )


@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_refuses_a_broken_safetensors_file(tmp_path: Path, damage: str) -> None:
    _, _, checkpoint = _setup(tmp_path)
    weights = checkpoint / "pre_layer.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) - 100] if damage == "truncate" else b"\x10\x00" + data[2:])
    _refused(checkpoint, tmp_path / "out.gguf", "pre_layer.safetensors")


@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_refuses_a_broken_base(tmp_path: Path, damage: str) -> None:
    _, base, checkpoint = _setup(tmp_path)
    data = base.read_bytes()
    base.write_bytes(data[: len(data) // 2] if damage == "truncate" else data[:4] + bytes(range(256)) * 4)
    _refused(checkpoint, tmp_path / "out.gguf", "base.gguf")


def test_refuses_an_unsupported_architecture(tmp_path: Path) -> None:
    model, base, _ = _setup(tmp_path)
    reader = gguf.GGUFReader(base)
    falcon = tmp_path / "falcon.gguf"
    metadata = [  # a falcon file names its hyperparameters falcon.*
        dataclasses.replace(entry, key=entry.key.replace("llama.", "falcon.", 1))
        for entry in copy_metadata(reader, {})
    ]
    write_gguf(falcon, "falcon", metadata, [copy_tensor(t) for t in reader.tensors], force=False)
    checkpoint = write_checkpoint(tmp_path / "ckpt-falcon", tiny_pre_layer(model), falcon)
    _refused(checkpoint, tmp_path / "out.gguf", "architecture 'falcon' is not supported")


def test_refuses_an_incomplete_checkpoint(tmp_path: Path) -> None:
    _, base, checkpoint = _setup(tmp_path)
    (checkpoint / "clm_manifest.json").write_text("{not json")
    _refused(checkpoint, tmp_path / "out.gguf", "not valid JSON")
    (checkpoint / "clm_manifest.json").unlink()
    _refused(checkpoint, tmp_path / "out.gguf", "no clm_manifest.json")


def test_finds_the_recorded_base_and_asks_for_base_when_it_is_gone(tmp_path: Path) -> None:
    _, base, checkpoint = _setup(tmp_path)
    moved = base.rename(tmp_path / "moved.gguf")
    _refused(checkpoint, tmp_path / "out.gguf", "is gone; pass --base")
    _graft(checkpoint, tmp_path / "out.gguf", base=moved)  # same bytes, so the sha256 still matches
    assert (tmp_path / "out.gguf").is_file()


def test_refuses_a_hugging_face_base_without_base_option(tmp_path: Path) -> None:
    _, _, checkpoint = _setup(tmp_path)
    manifest = json.loads((checkpoint / "clm_manifest.json").read_text())
    manifest["base"]["kind"] = "hf"
    (checkpoint / "clm_manifest.json").write_text(json.dumps(manifest))
    _refused(checkpoint, tmp_path / "out.gguf", "not a GGUF file; pass --base")


def test_existing_output_needs_force_and_is_never_half_written(tmp_path: Path, monkeypatch) -> None:
    _, base, checkpoint = _setup(tmp_path)
    out = tmp_path / "clm.gguf"
    out.write_bytes(b"precious")
    _refused(checkpoint, out, "already exists.*--force")
    _refused(checkpoint, base, "is an input of the conversion", force=True)
    _refused(checkpoint, base, "is an input of the conversion", force=True, quantize="Q8_0")

    # Ctrl-C in the middle of writing tensor data leaves the old file intact and no temp file.
    write_tensor_data = gguf.GGUFWriter.write_tensor_data
    calls = []

    def interrupted_after_three(writer: gguf.GGUFWriter, tensor: np.ndarray) -> None:
        calls.append(tensor.nbytes)
        if len(calls) > 3:
            raise KeyboardInterrupt
        write_tensor_data(writer, tensor)

    monkeypatch.setattr(gguf.GGUFWriter, "write_tensor_data", interrupted_after_three)
    with pytest.raises(KeyboardInterrupt):
        _graft(checkpoint, out, force=True)
    assert len(calls) == 4
    assert out.read_bytes() == b"precious"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["base.gguf", "ckpt", "clm.gguf"]

    monkeypatch.undo()
    _graft(checkpoint, out, force=True)
    assert out.read_bytes()[:4] == b"GGUF"


def test_an_empty_safetensors_file_is_refused(tmp_path: Path) -> None:
    _, _, checkpoint = _setup(tmp_path)
    save_file({}, checkpoint / "pre_layer.safetensors")
    _refused(checkpoint, tmp_path / "out.gguf", "lacks")


def _edit_manifest(checkpoint: Path, **changes: object) -> None:
    path = checkpoint / "clm_manifest.json"
    path.write_text(json.dumps(json.loads(path.read_text()) | changes))


def test_refuses_manifests_of_another_format_or_model(tmp_path: Path, capsys) -> None:
    _, _, checkpoint = _setup(tmp_path)
    out = tmp_path / "out.gguf"
    _edit_manifest(checkpoint, format_version=2)
    _refused(checkpoint, out, "format version 2; this converter reads 1")
    _edit_manifest(checkpoint, format_version=1, format="something-else")
    _refused(checkpoint, out, "not a clm-local-pre-layer manifest")
    _edit_manifest(checkpoint, format="clm-local-pre-layer", architecture="qwen2")
    _refused(
        checkpoint, out, "is a llama model; this checkpoint was trained on a qwen2 model", force_base=True
    )
    _edit_manifest(checkpoint, architecture="llama", base_block_count=5)
    _refused(checkpoint, out, "trained on .*5 blocks.*--force-base")
    _graft(checkpoint, out, force_base=True)
    assert "grafting anyway" in capsys.readouterr().err


def test_reads_what_the_trainer_writes(tmp_path: Path) -> None:
    """The contract with clm_local/training/checkpoint.py: its own writer, then the graft."""
    torch = pytest.importorskip("torch")
    from clm_local.training import checkpoint as trainer_checkpoint
    from clm_local.training.base_model import base_identity, resolve_base

    model = make_tiny_model("qwen2", n_base_blocks=2)
    base = model.write(tmp_path / "base.gguf", "base")
    pre_layer = {k: torch.from_numpy(v) for k, v in tiny_pre_layer(model).items()}
    manifest = trainer_checkpoint.make_manifest(
        architecture="qwen2",
        base_block_count=2,
        compute_dtype="fp32",
        objective="dpo",
        base=base_identity(resolve_base(base)),
        data={"path": "prefs.jsonl", "sha256": "0" * 64, "examples": 4, "truncated": 0, "skipped_lines": 0},
        eval_data=None,
        hyperparameters={"beta": 0.25, "lr": 1e-5},
        progress={"step": 3, "total_steps": 3, "epoch": 1.0, "finished": True},
        metrics={"train": {"loss": 0.5}, "eval": None},
    )
    checkpoint = tmp_path / "ckpt"
    checkpoint.mkdir()
    trainer_checkpoint.save_checkpoint(checkpoint, pre_layer, {"step": 3}, manifest)

    out = tmp_path / "clm.gguf"
    _graft(checkpoint, out)
    reader = gguf.GGUFReader(out)
    assert value(reader, "clm.train.beta") == pytest.approx(0.25)
    assert value(reader, "clm.train.step") == 3
    expected = model.variant_tensors("clm")
    for tensor in reader.tensors:
        np.testing.assert_array_equal(np.asarray(tensor.data), expected[tensor.name], err_msg=tensor.name)


def test_a_full_disk_is_one_error_line_and_leaves_nothing(tmp_path: Path, monkeypatch) -> None:
    _, _, checkpoint = _setup(tmp_path)

    def disk_full(writer: gguf.GGUFWriter, tensor: np.ndarray) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(gguf.GGUFWriter, "write_tensor_data", disk_full)
    _refused(checkpoint, tmp_path / "out.gguf", "writing .*out.gguf failed: No space left on device")
