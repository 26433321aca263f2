"""`train` and `convert` check their inputs first: bad data (encoding included) and a base that
already has a pre-layer fail in a second, before any model loads, and leave nothing behind; the
GGUF a model travels in names no path of the machine that trained it."""

from __future__ import annotations

import json
from pathlib import Path

import gguf
import pytest
from clm_local.converters.convert import ConvertOptions, convert
from test_convert_fixtures import quantize_file, tiny_pre_layer, value, write_checkpoint
from tiny_gguf import make_tiny_model

from clm_local.errors import ClmError

pytest.importorskip("torch")

from clm_local.training import TrainOptions, train  # noqa: E402 - needs the training extras
from clm_local.training import trainer as trainer_module  # noqa: E402

PAIR = {"prompt": "Hello", "chosen": "Hi, glad to help.", "rejected": "No."}


@pytest.fixture
def base(tmp_path: Path) -> Path:
    return make_tiny_model("llama").write(tmp_path / "base.gguf", "base")


@pytest.fixture
def no_model_loading(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if training gets as far as loading the tokenizer or the weights."""

    def loaded(*args: object, **kwargs: object) -> None:
        raise AssertionError("the model was loaded before the inputs were checked")

    monkeypatch.setattr(trainer_module, "load_tokenizer", loaded)
    monkeypatch.setattr(trainer_module, "load_model", loaded)


def refused(base: Path, data: Path, output: Path, match: str, **options: object) -> None:
    with pytest.raises(ClmError, match=match):
        train(base, data, output, TrainOptions(progress=False, **options))
    assert not output.exists(), "a failed run must not leave an output folder"


@pytest.mark.usefixtures("no_model_loading")
def test_data_that_is_not_utf8_is_one_error_before_the_model_loads(base: Path, tmp_path: Path) -> None:
    data = tmp_path / "latin1.jsonl"
    data.write_bytes(json.dumps(PAIR).encode() + b"\n" + '{"prompt": "caf\xe9"}\n'.encode("latin-1"))
    refused(base, data, tmp_path / "ckpt", r"latin1.jsonl:2: not UTF-8 text \(byte 0xe9 at column 16\)")


@pytest.mark.usefixtures("no_model_loading")
@pytest.mark.parametrize(
    ("lines", "match"),
    [
        (['{"prompt": "a", "chosen": "b"}'], ":1: missing field 'rejected'"),
        (["not json"], ":1: not valid JSON"),
        ([], "holds no usable examples"),
    ],
)
def test_bad_data_fails_before_the_model_loads(
    base: Path, tmp_path: Path, lines: list[str], match: str
) -> None:
    data = tmp_path / "data.jsonl"
    data.write_text("".join(line + "\n" for line in lines))
    refused(base, data, tmp_path / "ckpt", match)


@pytest.mark.usefixtures("no_model_loading")
def test_bad_eval_data_fails_before_the_model_loads(base: Path, tmp_path: Path) -> None:
    data = tmp_path / "data.jsonl"
    data.write_text(json.dumps(PAIR) + "\n")
    bad = tmp_path / "eval.jsonl"
    bad.write_bytes(b"\xff\xfe\n")
    refused(base, data, tmp_path / "ckpt", "eval.jsonl:1: not UTF-8", eval_data=bad)


@pytest.mark.usefixtures("no_model_loading")
def test_a_base_that_already_has_a_pre_layer_is_refused_at_once(tmp_path: Path) -> None:
    clm = make_tiny_model("qwen2").write(tmp_path / "clm.gguf", "clm")
    data = tmp_path / "data.jsonl"
    data.write_text(json.dumps(PAIR) + "\n")
    refused(clm, data, tmp_path / "ckpt", "already has a pre-layer .* --init-from")


@pytest.mark.usefixtures("no_model_loading")
def test_a_corrupt_gguf_base_is_refused_by_the_validator(base: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(base.read_bytes()[:5000])
    data = tmp_path / "data.jsonl"
    data.write_text(json.dumps(PAIR) + "\n")
    refused(broken, data, tmp_path / "ckpt", "truncated GGUF")


def test_a_run_that_fails_later_leaves_no_empty_folder(base: Path, tmp_path: Path, monkeypatch) -> None:
    def out_of_memory(*args: object, **kwargs: object) -> None:
        raise ClmError("not enough memory to load the model")

    monkeypatch.setattr(trainer_module, "load_tokenizer", out_of_memory)  # after the folder is made
    data = tmp_path / "data.jsonl"
    data.write_text(json.dumps(PAIR) + "\n")
    refused(base, data, tmp_path / "ckpt", "not enough memory")
    kept = tmp_path / "kept"
    kept.mkdir()
    with pytest.raises(ClmError, match="not enough memory"):
        train(base, data, kept, TrainOptions(progress=False))
    assert kept.is_dir(), "a folder the user made is never removed"


def test_quantize_of_an_already_quantized_base_is_refused_before_converting(tmp_path: Path) -> None:
    model = make_tiny_model("llama", n_embd=64)
    base = quantize_file(model.write(tmp_path / "f32.gguf", "base"), tmp_path / "q8.gguf")
    checkpoint = write_checkpoint(tmp_path / "ckpt", tiny_pre_layer(model), base)
    out = tmp_path / "out.gguf"
    with pytest.raises(ClmError, match=r"--quantize Q4_K_M: .*q8.gguf is already quantized \(Q8_0\)"):
        convert(checkpoint, out, ConvertOptions(quantize="Q4_K_M"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt", "f32.gguf", "q8.gguf"]


def test_provenance_holds_no_path_of_the_training_machine(tmp_path: Path) -> None:
    model = make_tiny_model("qwen2")
    base = model.write(tmp_path / "base.gguf", "base")
    checkpoint = write_checkpoint(tmp_path / "ckpt", tiny_pre_layer(model), base)
    manifest_path = checkpoint / "clm_manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["data"] = {"path": "/home/alice/private/prefs.jsonl", "examples": 4}
    manifest["hyperparameters"] = {"init_from": "C:\\Users\\alice\\sft-ckpt", "beta": 0.1}
    manifest_path.write_text(json.dumps(manifest))

    out = tmp_path / "clm.gguf"
    convert(checkpoint, out, ConvertOptions())
    reader = gguf.GGUFReader(out)
    assert value(reader, "clm.train.data.path") == "prefs.jsonl"
    assert value(reader, "clm.train.init_from") == "sft-ckpt"
    texts = [str(value(reader, key)) for key in reader.fields if key.startswith("clm.")]
    assert not [text for text in texts if "alice" in text or str(tmp_path) in text]
