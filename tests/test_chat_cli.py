"""`clm-local chat` and `clm-local demo` as a user runs them: one-shot, piped, interactive (through a
pseudo-terminal), and the failures a user meets: a missing file, a model without a chat template,
a bad command."""

from __future__ import annotations

import io
import signal
import subprocess
import sys
from pathlib import Path

import pexpect
import pytest
from test_chat_session import write_clm_copy

import clm_local
from clm_local import default_model
from clm_local.chat import ChatSession, SamplingParams
from clm_local.chat.repl import run_repl

CLI = [sys.executable, "-m", "clm_local.cli.main"]
FAST = ["--temp", "0", "--max-tokens", "12", "--threads", "1", "--ctx", "512"]
PROMPT_LINE = r"\[alpha [-0-9.e+]+ (logits|embed)\] > "


@pytest.fixture(scope="module")
def clm_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CLM file (P: a copy of base block 0), so the prompt shows alpha and mode whatever the
    state of the default model."""
    return write_clm_copy(default_model.base_model_path(), tmp_path_factory.mktemp("clm") / "clm.gguf")


def run_cli(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], input=stdin, capture_output=True, text=True, timeout=300)


def test_one_shot_prints_only_the_answer() -> None:
    result = run_cli("chat", "--prompt", "What is the capital of France?", *FAST)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip()
    assert "note:" not in result.stdout and "warning:" not in result.stdout


def test_a_piped_question_is_answered_like_prompt() -> None:
    piped = run_cli("chat", *FAST, stdin="What is the capital of France?\n")
    assert piped.returncode == 0, piped.stderr
    assert piped.stdout == run_cli("chat", "--prompt", "What is the capital of France?", *FAST).stdout


@pytest.mark.parametrize(
    ("mode", "alpha"), [("logits", 1.5), ("embed", 1.5), ("logits", 1.0), ("logits", 0.0)]
)
def test_a_one_shot_answer_in_its_fitted_context_is_the_sessions_answer(
    clm_path: Path, mode: str, alpha: float
) -> None:
    """One-shot chat sizes its context (and, in embed mode, its sequences) to the answer, and
    serves logits mode at alpha 0 and 1 with one sequence; the question is longer than the
    context it starts with, so the context grows."""
    question = "Explain how a lighthouse works, what its keeper does all night, and why. " * 4
    settings = ["--alpha", str(alpha), "--mode", mode]
    result = run_cli("chat", "-m", str(clm_path), "--prompt", question, *settings, *FAST)
    assert result.returncode == 0, result.stderr
    with clm_local.load(clm_path, n_ctx=512, n_threads=1) as model:
        session = ChatSession(model, alpha=alpha, mode=mode, sampling=SamplingParams(temp=0), max_tokens=12)
        expected = "".join(session.ask(question.strip()))
    assert result.stdout == expected + "\n"


def test_a_one_shot_question_longer_than_ctx_is_one_error_line() -> None:
    result = run_cli("chat", "--prompt", "Tell me a story. " * 20, *FAST[:-1], "32")
    assert result.returncode == 1
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1, result.stderr
    assert result.stdout == ""  # no half answer, not even an empty line


def test_a_missing_model_is_one_error_line(tmp_path: Path) -> None:
    result = run_cli("chat", "-m", str(tmp_path / "nope.gguf"), "--prompt", "hi")
    assert result.returncode == 1
    assert result.stderr.strip() == f"error: {tmp_path / 'nope.gguf'}: no such file"


def test_a_folder_as_model_points_to_convert(tmp_path: Path) -> None:
    checkpoint = tmp_path / "ckpt"
    checkpoint.mkdir()
    result = run_cli("chat", "-m", str(checkpoint), "--prompt", "hi")
    assert result.returncode == 1
    assert result.stderr.strip() == (
        f"error: {checkpoint} is a folder, not a GGUF file: make one with "
        f"`clm-local convert {checkpoint} model.gguf`"
    )


def test_bare_alpha_and_mode_show_the_current_values(clm_path: Path) -> None:
    """`/alpha` and `/mode` without a value show it instead of refusing the line."""
    lines = iter(["/alpha", "/mode", "/alpha 0.5", "/mode embed", "/alpha", "/mode"])

    def read(prompt: str) -> str:
        try:
            return next(lines)
        except StopIteration:
            raise EOFError from None

    out, err = io.StringIO(), io.StringIO()
    with clm_local.load(clm_path, n_ctx=256, n_threads=1) as model:
        run_repl(ChatSession(model, sampling=SamplingParams(temp=0)), read=read, out=out, err=err)
    assert err.getvalue().splitlines() == [
        "alpha is 1 (/alpha X sets it)",
        "mode is logits (/mode logits|embed sets it)",
        "alpha is 0.5 (/alpha X sets it)",
        "mode is embed (/mode logits|embed sets it)",
    ]


def test_a_model_without_chat_template_still_answers(tmp_path: Path) -> None:
    bare = tmp_path / "no-template.gguf"
    subprocess.run(
        [sys.executable, "-m", "gguf.scripts.gguf_new_metadata", "--remove-metadata",
         "tokenizer.chat_template", "--force", str(default_model.default_model_path()), str(bare)],
        check=True, capture_output=True,
    )  # fmt: skip
    result = run_cli("chat", "-m", str(bare), "--prompt", "What is the capital of France?", *FAST)
    assert result.returncode == 0, result.stderr
    assert "warning:" in result.stderr and "no chat template" in result.stderr
    assert result.stdout.strip()


def test_demo_shows_three_alphas() -> None:
    result = run_cli("demo", "--max-tokens", "6", "--threads", "1")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 3 and all(line.startswith("alpha=") for line in lines)
    assert lines[0].startswith("alpha=0 (")


def sigint_as_in_a_terminal() -> None:
    """Ctrl-C's default action in the child, as a terminal gives it: a suite started in the
    background (`pytest &`) has SIGINT ignored, and its children would inherit that."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def spawn_chat(*args: str) -> pexpect.spawn:
    child = pexpect.spawn(
        CLI[0],
        [*CLI[1:], "chat", *args],
        encoding="utf-8",
        timeout=120,
        preexec_fn=sigint_as_in_a_terminal,
    )
    child.expect(PROMPT_LINE)
    return child


def test_an_interactive_session(clm_path: Path) -> None:
    child = spawn_chat("-m", str(clm_path), *FAST, "--alpha", "1")
    child.sendline("What is the capital of France?")
    child.expect(PROMPT_LINE)
    assert child.before.strip()  # the answer
    child.sendline("/alpha 1.5")
    child.expect("computed once more")  # the first alpha off 0 and 1 adds the reference path
    child.expect(r"\[alpha 1.5 logits\] > ")
    child.sendline("/alpha strong")
    child.expect("error: /alpha needs a number")
    child.expect(r"\[alpha 1.5 logits\] > ")
    child.sendline("/mode embed")
    child.expect("computed again")
    child.expect(r"\[alpha 1.5 embed\] > ")
    child.sendline("And of Italy?")
    child.expect(r"\[alpha 1.5 embed\] > ")
    child.sendline("/frobnicate")
    child.expect("error: unknown command /frobnicate")
    child.sendline("/help")
    child.expect("/system TEXT")
    child.sendline("/quit")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0


def test_ctrl_c_stops_the_answer_and_end_of_input_leaves(clm_path: Path) -> None:
    child = spawn_chat(
        "-m", str(clm_path), "--alpha", "0", "--temp", "0", "--max-tokens", "400", "--threads", "1"
    )
    child.sendline("Count from 1 to 300, separated by commas.")
    child.expect(",")  # the answer is being written
    child.sendintr()
    child.expect(r"\(stopped\)")
    child.expect(PROMPT_LINE)
    child.sendeof()
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0


@pytest.mark.parametrize("flag", [["--alpha", "nan"], ["--mode", "average"], ["--top-p", "0"]])
def test_bad_options_are_one_error_line(flag: list[str]) -> None:
    result = run_cli("chat", *flag, "--prompt", "hi")
    assert result.returncode == 1
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1
