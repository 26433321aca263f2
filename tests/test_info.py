"""`clm-local info`: what it reports for a CLM file and for an ordinary model."""

from __future__ import annotations

from pathlib import Path

from clm_local.converters.info import format_info, read_info
from tiny_gguf import make_tiny_model


def test_info_of_a_clm_file(tmp_path: Path) -> None:
    model = make_tiny_model("qwen2", n_base_blocks=3, alpha_default=0.5, mix_default="embed")
    path = model.write(tmp_path / "clm.gguf", "clm")
    info = read_info(path)

    assert (info.architecture, info.n_blocks, info.n_pre_layers) == ("qwen2", 4, 1)
    assert (info.alpha_default, info.mix_default) == (0.5, "embed")
    p_params = sum(a.size for a in model.pre_layer.values())
    assert info.n_pre_layer_params == p_params
    assert info.n_params == sum(a.size for a in model.tensors.values())
    assert info.pre_layer_bytes == 4 * p_params
    assert info.tensor_types == {"F32": len(model.tensors)}
    assert info.pre_layer_share == p_params / info.n_params

    text = format_info(info)
    assert "blocks        4 = 1 pre-layer + 3 base blocks" in text
    assert "defaults      alpha 0.5, mix embed" in text
    assert f"{info.pre_layer_share:.1%} of" in text
    assert info.to_json()["pre_layer_share"] == info.pre_layer_share


def test_info_of_an_ordinary_model(tmp_path: Path) -> None:
    path = make_tiny_model("llama", n_base_blocks=2).write(tmp_path / "base.gguf", "base")
    info = read_info(path)
    assert (info.n_blocks, info.n_pre_layers, info.n_pre_layer_params) == (2, 0, 0)
    assert "no pre-layer (an ordinary model, not a CLM file)" in format_info(info)
