"""Every command and program in README.md and docs/*.md runs, so the documentation cannot drift.

Code blocks are run by their language: `bash` blocks line by line, `python` blocks as programs;
`text`, `json`, `c` and other blocks are not run. The commands of one page run in order in one
folder (so `train` makes the `ckpt/` that `convert` reads), with these adaptations, each needed to
keep the suite within CI's time and each applied the same way to every page:
- `clm-local serve ...` starts on a free port (the page's port is rewritten in its programs),
  waits for its ready line, serves the page's `python` blocks and `GET /`, then stops;
- `clm-local train` runs at most 2 optimizer steps;
- `clm-local chat` without `--prompt` reads its message from stdin (one answer, then exit), and
  every chat answers at most 8 tokens;
- commands that run for minutes to hours (`recipe`, `bench`, `runtime`, `make`, the benchmark
  scripts) are checked with `--help` (the subcommand and every option named must exist) or, for
  `make`, that the Makefile has the target.
The folder starts with `prefs.jsonl`, a few preference pairs in the documented format.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from server_process import ServerProcess

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.MULTILINE | re.DOTALL)
CLI = [sys.executable, "-m", "clm_local.cli.main"]
CHECKED_WITH_HELP = ("recipe", "bench", "runtime", "rpc-server")
PAIRS = [
    ("Name a colour.", "Blue.", "There are many colours; one of them, which I would name, is blue."),
    ("What is 2 + 2?", "4.", "Two plus two, added together as numbers, makes four in the end."),
    ("Say hello.", "Hello!", "Well, hello there, it is very nice to say hello to you today."),
    ("Name a fruit.", "An apple.", "A fruit that many people like to eat is the apple, often red."),
]


def blocks(page: Path) -> list[tuple[str, str, int]]:
    """(language, code, line) of each fenced block."""
    text = page.read_text()
    return [(m.group(1), m.group(2), text.count("\n", 0, m.start()) + 1) for m in FENCE.finditer(text)]


def commands(code: str) -> list[list[str]]:
    """The commands of a bash block, one per line, without trailing comments."""
    return [words for line in code.splitlines() if (words := shlex.split(line, comments=True))]


def adapted(words: list[str]) -> list[str]:
    """A documented `clm-local` command as the test runs it (see the module docstring)."""
    verb = words[1] if len(words) > 1 else ""
    if verb == "train":
        if "--max-steps" in words:
            i = words.index("--max-steps")
            return [*words[: i + 1], "2", *words[i + 2 :]]
        return [*words, "--max-steps", "2"]
    if verb == "chat":
        return [*words, "--max-tokens", "8"]
    return words


def run(words: list[str], folder: Path, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    if words[0] == "clm-local":
        command = [*CLI, *words[1:]]
    elif words[0] == ".venv/bin/python":
        command = [sys.executable, *words[1:]]
    else:
        raise AssertionError(f"a bash line must start with clm-local, make or .venv/bin/python: {words}")
    return subprocess.run(command, cwd=folder, input=stdin or "", capture_output=True, text=True, timeout=900)


def check_with_help(words: list[str], folder: Path) -> None:
    """The subcommand exists and every option the page names is one of its options."""
    options = [w.split("=")[0] for w in words if w.startswith("--")]
    if words[:2] == [".venv/bin/python", "-m"]:  # a module's own command line
        subcommand = words[:3]
    else:
        subcommand = [w for w in words[: 3 if words[0] == "clm-local" else 2] if not w.startswith("-")]
    result = run([*subcommand, "--help"], folder)
    assert result.returncode == 0, result.stderr
    for option in options:
        assert option in result.stdout, f"{option} is not an option of {' '.join(subcommand)}"


def check_make(words: list[str]) -> None:
    targets = re.findall(r"^([\w-]+):", (ROOT / "Makefile").read_text(), re.MULTILINE)
    for target in [w for w in words[1:] if "=" not in w]:
        assert target in targets, f"the Makefile has no target {target}"


def run_programs(programs: list[str], folder: Path, port_in_docs: str, url: str) -> None:
    for program in programs:
        code = program.replace(f"127.0.0.1:{port_in_docs}", url.removeprefix("http://"))
        result = subprocess.run([sys.executable, "-c", code], cwd=folder, capture_output=True, text=True,
                                timeout=300)  # fmt: skip
        assert result.returncode == 0, f"{code}\n{result.stderr[-3000:]}"
        assert result.stdout.strip(), f"the program printed nothing:\n{code}"


@pytest.mark.parametrize("page", PAGES, ids=[p.name for p in PAGES])
def test_every_snippet_runs(page: Path, tmp_path: Path) -> None:
    found = blocks(page)
    programs = [code for lang, code, _ in found if lang == "python"]
    served = False
    (tmp_path / "prefs.jsonl").write_text(
        "".join(json.dumps({"prompt": p, "chosen": c, "rejected": r}) + "\n" for p, c, r in PAIRS)
    )
    for lang, code, line in found:
        if lang == "json":
            for record in code.strip().splitlines():
                json.loads(record)  # the documented format parses
        if lang not in ("bash", "sh"):
            continue
        for words in commands(code):
            where = f"{page.name}:{line}: {shlex.join(words)}"
            if words[0] == "make":
                check_make(words)
            elif words[0] == ".venv/bin/python" or words[1] in CHECKED_WITH_HELP:
                check_with_help(words, tmp_path)
            elif words[1] == "serve":
                port = words[words.index("--port") + 1] if "--port" in words else "8080"
                args = words[2:]
                if "--port" in args:
                    del args[args.index("--port") : args.index("--port") + 2]
                server = ServerProcess(*args, "--ctx", "512")
                try:
                    assert "<html" in httpx.get(server.url + "/").text.lower(), where
                    run_programs(programs, tmp_path, port, server.url)
                finally:
                    assert server.stop() == 0, server.errors()
                served = True
            else:
                stdin = "Say hello.\n" if words[1] == "chat" and "--prompt" not in words else None
                result = run(adapted(words), tmp_path, stdin)
                assert result.returncode == 0, f"{where}\n{result.stderr[-3000:]}"
    if programs and not served:  # programs that need no server
        for program in programs:
            result = subprocess.run([sys.executable, "-c", program], cwd=tmp_path, capture_output=True,
                                    text=True, timeout=600)  # fmt: skip
            assert result.returncode == 0, f"{program}\n{result.stderr[-3000:]}"


def test_the_readme_opens_with_the_two_commands() -> None:
    lang, code, line = blocks(ROOT / "README.md")[0]
    assert line <= 4 and commands(code) == [["make", "demo"], ["make", "test"]]
    assert "make test" in (ROOT / ".ci" / "run").read_text()


def test_the_readme_is_a_front_door() -> None:
    assert len((ROOT / "README.md").read_text().splitlines()) <= 250
    linked = set(re.findall(r"\]\((docs/[\w.-]+\.md)\)", (ROOT / "README.md").read_text()))
    assert linked == {f"docs/{p.name}" for p in ROOT.glob("docs/*.md") if p.name != "pre_layer_type_eval.md"}
