"""Path (c): a GGUF already in the expanded layout gets the clm.* keys, everything else byte for byte."""

from __future__ import annotations

from pathlib import Path

import gguf
import pytest
from clm_local.converters.convert import ConvertOptions, convert
from clm_local.converters.gguf_io import MetadataEntry, copy_metadata, copy_tensor, write_gguf
from test_convert_fixtures import quantize_file, raw_fields, value
from tiny_gguf import make_tiny_model

from clm_local.errors import ClmError


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_adds_clm_keys_and_copies_everything_else(tmp_path: Path, arch: str) -> None:
    model = make_tiny_model(arch, n_base_blocks=2)
    source = model.write(tmp_path / "expanded.gguf", "plain_expanded")
    out = tmp_path / "clm.gguf"
    convert(source, out, ConvertOptions(alpha_default=0.5, mix_default="embed"))

    before, after = gguf.GGUFReader(source), gguf.GGUFReader(out)
    added = {k: v for k, v in raw_fields(after).items() if k not in raw_fields(before)}
    assert {k: v for k, v in raw_fields(after).items() if k not in added} == raw_fields(before)
    assert set(added) == {"clm.version", "clm.pre_layer_count", "clm.alpha_default", "clm.mix_default"}
    assert value(after, "clm.pre_layer_count") == 1
    assert value(after, "clm.alpha_default") == 0.5
    assert value(after, "clm.mix_default") == "embed"
    assert [(t.name, t.tensor_type, t.data.tobytes()) for t in after.tensors] == [
        (t.name, t.tensor_type, t.data.tobytes()) for t in before.tensors
    ]


@pytest.mark.parametrize(
    ("options", "match"),
    [
        (ConvertOptions(pre_layers=3), "3 blocks: too few to hold 3 pre-layer"),
        (ConvertOptions(pre_layers=0), "--pre-layers must be at least 1"),
        (ConvertOptions(outtype="f16"), "--outtype does not apply to a GGUF source"),
        (ConvertOptions(base=Path("base.gguf")), "apply to training checkpoints only"),
        (ConvertOptions(mix_default="average"), "--mix-default must be one of logits, embed"),
        (ConvertOptions(alpha_default=float("nan")), "--alpha-default must be a finite number"),
    ],
)
def test_refuses_bad_options(tmp_path: Path, options: ConvertOptions, match: str) -> None:
    source = make_tiny_model("llama", n_base_blocks=2).write(tmp_path / "expanded.gguf", "plain_expanded")
    with pytest.raises(ClmError, match=match):
        convert(source, tmp_path / "clm.gguf", options)
    assert not (tmp_path / "clm.gguf").exists()


def test_refuses_bad_sources(tmp_path: Path) -> None:
    model = make_tiny_model("llama", n_base_blocks=2)
    out = tmp_path / "clm.gguf"
    with pytest.raises(ClmError, match="already has a pre-layer"):
        convert(model.write(tmp_path / "clm-already.gguf", "clm"), out, ConvertOptions())
    source = model.write(tmp_path / "expanded.gguf", "plain_expanded")
    with pytest.raises(ClmError, match="is an input of the conversion"):
        convert(source, source, ConvertOptions(force=True))
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ClmError, match="is not a GGUF file"):
        convert(tmp_path / "notes.txt", out, ConvertOptions())
    with pytest.raises(ClmError, match="no such file or folder"):
        convert(tmp_path / "missing", out, ConvertOptions())
    with pytest.raises(ClmError, match="neither a training checkpoint"):
        convert(tmp_path, out, ConvertOptions())
    assert not out.exists()


def test_refuses_one_part_of_a_split_gguf(tmp_path: Path) -> None:
    reader = gguf.GGUFReader(make_tiny_model("llama").write(tmp_path / "expanded.gguf", "plain_expanded"))
    split = [MetadataEntry("split.count", 2, gguf.GGUFValueType.UINT16)]
    part = tmp_path / "model-00001-of-00002.gguf"
    write_gguf(
        part,
        "llama",
        copy_metadata(reader, {}) + split,
        [copy_tensor(t) for t in reader.tensors],
        force=False,
    )
    with pytest.raises(ClmError, match="one part of a split GGUF"):
        convert(part, tmp_path / "clm.gguf", ConvertOptions())


def test_an_ordinary_model_is_not_taken_for_an_expanded_one(tmp_path: Path) -> None:
    """Block 0 of an ordinary model is unrelated to block 1: refused unless --trust-layout."""
    ordinary = make_tiny_model("llama", n_base_blocks=3).write(tmp_path / "ordinary.gguf", "base")
    out = tmp_path / "clm.gguf"
    with pytest.raises(
        ClmError, match=r"block 0 does not look like a pre-layer: .* differ from block 1's by"
    ):
        convert(ordinary, out, ConvertOptions())
    assert not out.exists()
    convert(ordinary, out, ConvertOptions(trust_layout=True))
    assert value(gguf.GGUFReader(out), "clm.pre_layer_count") == 1


def test_a_quantized_expanded_model_passes_the_layout_check(tmp_path: Path) -> None:
    source = make_tiny_model("llama", n_base_blocks=2).write(tmp_path / "expanded.gguf", "plain_expanded")
    quantized = quantize_file(source, tmp_path / "expanded-q8.gguf")
    convert(quantized, tmp_path / "clm.gguf", ConvertOptions())
    assert value(gguf.GGUFReader(tmp_path / "clm.gguf"), "clm.pre_layer_count") == 1


def test_trust_layout_does_not_apply_to_a_checkpoint(tmp_path: Path) -> None:
    from test_convert_fixtures import tiny_pre_layer, write_checkpoint

    model = make_tiny_model("llama", n_base_blocks=2)
    base = model.write(tmp_path / "base.gguf", "base")
    checkpoint = write_checkpoint(tmp_path / "ckpt", tiny_pre_layer(model), base)
    with pytest.raises(ClmError, match="--trust-layout applies to model folders and GGUF sources"):
        convert(checkpoint, tmp_path / "out.gguf", ConvertOptions(trust_layout=True))
