"""The command line as a new user meets it: a closed pipe, Ctrl-C, typos in numbers, settings that
cannot work, an answer cut short, half characters, the help text, and the README's own examples.
All on the real default model and the installed command."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_chat_cli import sigint_as_in_a_terminal

from clm_local import default_model

CLM_LOCAL = str(Path(sys.executable).with_name("clm-local"))
README = Path(__file__).resolve().parents[1] / "README.md"
FAST = ["--temp", "0", "--threads", "1", "--ctx", "512"]
LONG_QUESTION = "Write a long story about a lighthouse keeper and the sea."


def clm_local_cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([CLM_LOCAL, *args], capture_output=True, text=True, timeout=timeout)


def test_a_closed_pipe_ends_quietly(tmp_path: Path) -> None:
    stderr = tmp_path / "stderr.txt"
    script = (
        f"{CLM_LOCAL} chat --prompt '{LONG_QUESTION}' --max-tokens 300 {' '.join(FAST)} 2> {stderr}"
        " | head -c 20 > /dev/null; exit ${PIPESTATUS[0]}"
    )
    result = subprocess.run(["bash", "-c", script], timeout=300)
    assert result.returncode in (0, 141)
    assert stderr.read_text() == ""


def test_ctrl_c_in_a_one_shot_answer_ends_the_line() -> None:
    child = subprocess.Popen(
        [CLM_LOCAL, "chat", "--prompt", LONG_QUESTION, "--max-tokens", "400", *FAST],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        preexec_fn=sigint_as_in_a_terminal,
    )
    first = child.stdout.read(8)  # the answer has started
    time.sleep(0.2)
    child.send_signal(signal.SIGINT)
    out, err = child.communicate(timeout=120)
    assert first and (first + out).endswith(b"\n")
    assert child.returncode == 130
    assert err.decode().strip().splitlines()[-1] == "interrupted"


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["chat", "--alpha", "abc"], "error: Invalid value for '--alpha': "),
        (["chat", "--max-tokens", "1.5"], "error: Invalid value for '--max-tokens': "),
        (["chat", "--nope"], "error: No such option: --nope"),
        (["info"], "error: Missing argument"),
    ],
)
def test_a_mistyped_command_line_is_one_line(args: list[str], expected: str) -> None:
    result = clm_local_cli(*args)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and result.stderr.startswith(expected), result.stderr
    assert "--help" in result.stderr


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--temp", "-1"], "error: temp must be 0 (greedy) or more, got -1.0"),
        (["--threads", "-1"], "error: n_threads must be at least 1, got -1"),
        (["--n-gpu-layers", "-3"], "error: n_gpu_layers must be 0 or more (99: all layers), got -3"),
    ],
)
def test_settings_that_cannot_work_are_refused(args: list[str], expected: str) -> None:
    result = clm_local_cli("chat", "--prompt", "hi", *args)
    assert result.returncode == 1
    assert result.stderr.strip() == expected


def test_gpu_layers_on_a_cpu_build_are_explained() -> None:
    from clm_local.runtime import library

    if library.status().gpu_offload:
        pytest.skip("this runtime has a GPU backend")
    result = clm_local_cli("chat", "--prompt", "hi", "--max-tokens", "2", "--n-gpu-layers", "99", *FAST)
    assert result.returncode == 0, result.stderr
    assert "warning: n_gpu_layers=99 has no effect: this llama.cpp build has no GPU backend" in result.stderr


def test_an_answer_cut_by_max_tokens_says_so_on_stderr() -> None:
    result = clm_local_cli("chat", "--prompt", LONG_QUESTION, "--max-tokens", "5", *FAST)
    assert result.returncode == 0, result.stderr
    assert "note: the answer was cut at --max-tokens 5" in result.stderr
    assert "cut at" not in result.stdout


def test_no_character_is_cut_in_half() -> None:
    """A byte-level vocabulary spells some characters over several tokens; an answer that stops
    after the first of them must not end in half a character (or U+FFFD)."""
    import clm_local
    from clm_local.chat.session import _text

    with clm_local.load(default_model.base_model_path(), n_ctx=64, n_threads=1) as model:
        pieces = {token: model.token_to_piece(token) for token in range(model.n_vocab)}
        lead = next(t for t, p in pieces.items() if len(p) == 1 and 0xC2 <= p[0] <= 0xDF)
        tail = next(t for t, p in pieces.items() if len(p) == 1 and 0x80 <= p[0] <= 0xBF)
        whole = (pieces[lead] + pieces[tail]).decode()
        assert "".join(_text(model, [lead, tail])) == whole
        assert "".join(_text(model, [lead])) == ""
        cut = "".join(_text(model, [*model.tokenize("café au lait", add_special=False), lead]))
        assert cut == "café au lait" and "\ufffd" not in cut


@pytest.mark.parametrize("command", ["chat", "train", "convert", "info", "bench", "recipe"])
def test_help_shows_no_type_placeholders_on_flags(command: str) -> None:
    result = clm_local_cli(command, "--help")
    assert result.returncode == 0, result.stderr
    assert "<bool>" not in result.stdout and "╭" not in result.stdout


TWO = ("train", "info")


def test_usage_lines_name_the_arguments_and_train_names_every_family() -> None:
    from clm_local.gguf.keys import SUPPORTED_ARCHITECTURES

    usage = {command: clm_local_cli(command, "--help").stdout.splitlines()[0] for command in TWO}
    assert usage == {
        "train": "Usage: clm-local train [OPTIONS] BASE DATA",
        "info": "Usage: clm-local info [OPTIONS] FILE",
    }
    train_help = " ".join(clm_local_cli("train", "--help").stdout.split())
    assert ", ".join(SUPPORTED_ARCHITECTURES) in train_help and "(Llama, Qwen2)" not in train_help
    assert "`default`: the default model's base GGUF" in train_help


def test_info_default_names_the_base_that_train_default_uses() -> None:
    result = clm_local_cli("info", "default")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith(f"file          {default_model.default_model_path()} (")
    assert f"base file     {default_model.base_model_path()}" in lines
    assert "clm-local train default DATA -o CKPT" in lines[-1]


@pytest.mark.parametrize("kind", ["missing", "folder", "plain"])
def test_bench_refuses_a_model_it_cannot_use_before_announcing_work(tmp_path: Path, kind: str) -> None:
    paths = {"missing": tmp_path / "nope.gguf", "folder": tmp_path, "plain": default_model.base_model_path()}
    path = paths[kind]
    expected = {
        "missing": f"error: {path}: no such file",
        "folder": f"error: {path} is a folder, not a GGUF file: make one with "
        f"`clm-local convert {path} model.gguf`",
        "plain": f"error: {path} has no CLM pre-layer: the benchmark compares the alignment modes of a CLM "
        "file (make one with `clm-local convert`)",
    }[kind]
    result = clm_local_cli("bench", str(path))
    assert result.returncode == 1
    assert result.stderr.strip() == expected  # the only line: no "writing ..." before it


def test_the_quantize_example_on_the_default_model_says_what_base_it_needs(tmp_path: Path) -> None:
    """docs/training.md's `convert ckpt/ model.gguf --quantize Q4_K_M` with the default model's own P and
    base (Q4_1): one line saying what base it needs, before any work, and no output."""
    shipped = Path(default_model.__file__).with_name("default_pre_layer")
    base = default_model.base_model_path()
    out = tmp_path / "model.gguf"
    result = clm_local_cli("convert", str(shipped), str(out), "--base", str(base), "--quantize", "Q4_K_M")
    assert result.returncode == 1
    assert result.stderr.strip() == (
        f"error: --quantize Q4_K_M: {base} is already quantized (Q4_1, Q8_0); quantize from an F16, BF16 "
        "or F32 base, or leave --quantize off (the base's types are kept)"
    )
    assert list(tmp_path.iterdir()) == []
    training = " ".join((README.with_name("docs") / "training.md").read_text().split())
    assert "needs an unquantized (F16, BF16 or F32) base" in training
