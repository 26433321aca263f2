"""Run mutated GGUFs through `clm-local info` and `load` + `logits` in child processes.

Each child runs a batch of cases under a memory limit (RLIMIT_AS) and prints `BEGIN i` before and
`END i STATUS` after each case, so a case that kills its child (a signal) or hangs (no END within
the per-case time limit) is attributed to that case, and a fresh child carries on after it.

A case's status is one of:
  ok        info printed and the model loaded and gave finite logits (tokenizing text if it can)
  refused   a ClmError, shown as one `error: ...` line (the expected end for a bad file)
  traceback any other exception          \
  nonfinite logits with NaN/Inf returned  |  failures
  signal N  the child was killed          |
  timeout   no answer in time            /

`python tests/fuzz_runner.py --cases 5000` (or `make fuzz`) is the long run; tests/test_fuzz.py the
short one in CI. Both use the recipes of tests/gguf_mutations.py.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import io
import json
import os
import queue
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

FAILURES = ("traceback", "nonfinite", "signal", "timeout", "exit")
TEXT = "héllo wörld ✓\n\x00 <|im_start|>"  # multi-byte, control and special-looking text


# --- the child ----------------------------------------------------------------------------------


def _run_cli(args: list[str]) -> str:
    """`clm-local ARGS` in this process: ok, refused (one error line), or traceback."""
    from clm_local.cli.main import run

    err = io.StringIO()
    argv = sys.argv
    sys.argv = ["clm-local", *args]
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
            run()
        code = 0
    except SystemExit as exit_:
        code = exit_.code or 0
    finally:
        sys.argv = argv
    if code == 0:
        return "ok"
    lines = err.getvalue().strip().splitlines()
    if code == 1 and len(lines) == 1 and lines[0].startswith("error: "):
        return "refused"
    return f"traceback cli exit {code}: {err.getvalue().strip()[-300:]!r}"


def _load_and_run(path: str) -> str:
    import warnings

    import numpy as np

    import clm_local
    from clm_local.errors import ClmError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with clm_local.load(path, n_ctx=32, n_threads=1, n_batch=32) as model:
                tokens = [0, model.n_vocab - 1, 1 % model.n_vocab]
                logits = model.logits(tokens)
                if not np.isfinite(logits).all():
                    return "nonfinite"
                if model.has_text_vocabulary:
                    model.tokenize(TEXT, add_special=True, parse_special=True)
                    model.token_to_piece(model.n_vocab - 1)
                    model.chat_template()
    except ClmError:
        return "refused"
    return "ok"


def child_main() -> None:
    """Read `[index, path]` JSON lines from stdin; report each case on stdout."""
    for line in sys.stdin:
        index, path = json.loads(line)
        print(f"BEGIN {index}", flush=True)
        try:
            statuses = [
                _run_cli(["info", path]),
                _run_cli(["info", path, "--json", "--check-values"]),
                _load_and_run(path),
            ]
            status = next((s for s in statuses if is_failure(s)), statuses[-1])
        except Exception as error:  # noqa: BLE001 - any other exception is what the fuzz looks for
            status = f"traceback {type(error).__name__}: {str(error)[:300]!r}"
        print(f"END {index} {status}", flush=True)


# --- the parent ---------------------------------------------------------------------------------


def _limit_memory(limit_bytes: int) -> None:
    resource.setrlimit(resource.RLIMIT_AS, (limit_bytes, limit_bytes))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # no core files from expected crashes


def run_cases(
    paths: list[Path],
    *,
    case_timeout_s: float = 30.0,
    memory_mb: int = 3072,
    log_dir: Path | None = None,
    child_command: list[str] | None = None,
) -> list[str]:
    """The status of each file, in order; crashes and hangs are attributed to their case.
    `child_command` replaces this file's child (the harness's own test uses it)."""
    command = child_command or [sys.executable, __file__, "--child"]
    results: list[str | None] = [None] * len(paths)
    next_case = 0
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    while next_case < len(paths):
        stderr = (log_dir / f"child-{next_case}.log").open("w") if log_dir else subprocess.DEVNULL
        child = subprocess.Popen(
            command,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
            env=env,
            preexec_fn=lambda: _limit_memory(memory_mb << 20),
        )
        lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=_pump, args=(child.stdout, lines), daemon=True).start()
        threading.Thread(
            target=_feed, args=(child.stdin, list(enumerate(paths))[next_case:]), daemon=True
        ).start()
        current: int | None = None
        while True:
            try:
                line = lines.get(timeout=case_timeout_s)
            except queue.Empty:
                child.kill()
                child.wait()
                stuck = next_case if current is None else current
                results[stuck] = "timeout"
                next_case = stuck + 1
                break
            if line is None:  # the child ended
                code = child.wait()
                if current is not None:
                    results[current] = f"signal {-code}" if code < 0 else f"exit {code}"
                    next_case = current + 1
                elif next_case < len(paths) and results[next_case] is None:
                    results[next_case] = f"exit {code} before the case began"
                    next_case += 1
                break
            word, index, *rest = line.split(" ", 2)
            if word == "BEGIN":
                current = int(index)
            elif word == "END":
                results[int(index)] = rest[0] if rest else "?"
                current = None
                next_case = int(index) + 1
        if stderr is not subprocess.DEVNULL:
            stderr.close()
    return [status or "missing" for status in results]


def _pump(stream: io.TextIOBase, lines: queue.Queue) -> None:
    for line in stream:
        lines.put(line.rstrip("\n"))
    lines.put(None)


def _feed(stream: io.TextIOBase, cases: list[tuple[int, Path]]) -> None:
    with contextlib.suppress(BrokenPipeError):
        for index, path in cases:
            stream.write(json.dumps([index, str(path)]) + "\n")
        stream.close()


def is_failure(status: str) -> bool:
    return status.split(" ", 1)[0] in FAILURES


def summarize(statuses: list[str]) -> dict[str, int]:
    return dict(collections.Counter(status.split(" ", 1)[0] for status in statuses).most_common())


# --- the fuzz: bases, recipes, batches -------------------------------------------------------------


def fuzz(
    recipes: list[dict], bases: dict[str, bytes], work: Path, *, batch: int = 100, **limits: object
) -> list[tuple[dict, str]]:
    """Write each recipe's file (a batch at a time, to keep the disk small) and run it."""
    from gguf_mutations import apply

    outcomes = []
    for start in range(0, len(recipes), batch):
        chunk = recipes[start : start + batch]
        paths = []
        for offset, recipe in enumerate(chunk):
            path = work / f"case-{start + offset}.gguf"
            path.write_bytes(apply(recipe, bases))
            paths.append(path)
        outcomes += zip(chunk, run_cases(paths, **limits), strict=True)
        for path in paths:
            path.unlink()
    return outcomes


FAMILIES = ("qwen3", "gemma2", "gemma3", "phi3")  # beyond llama and qwen2, made by tiny_families


def write_bases(folder: Path) -> tuple[dict[str, bytes], dict[str, str]]:
    """The valid files the mutations start from: tiny CLM llama and qwen2 files (no text
    vocabulary), a tiny plain llama with a real byte-level BPE vocabulary and chat template, and
    a tiny CLM file of each other family (BPE vocabulary; made with transformers, once per run)."""
    from tiny_gguf import make_tiny_model

    paths = {
        "llama_clm": make_tiny_model("llama", n_embd=32, n_ff=64, n_vocab=64).write(folder / "llama.gguf"),
        "qwen2_clm": make_tiny_model("qwen2", n_embd=32, n_ff=64, n_vocab=64).write(folder / "qwen2.gguf"),
    }
    archs = {"llama_clm": "llama", "qwen2_clm": "qwen2"}
    try:
        import tiny_families  # noqa: F401  (the check that the training extras are there)
        from tiny_hf import make_tiny_model as make_hf_model
        from tiny_hf import write_tiny_gguf
    except ImportError:  # the training extras are missing: fuzz the two files above only
        pass
    else:
        quiet = io.StringIO()  # transformers' progress bars
        with contextlib.redirect_stdout(quiet), contextlib.redirect_stderr(quiet):
            paths["llama_bpe"] = write_tiny_gguf(make_hf_model(folder / "hf"), folder / "bpe.gguf")
        archs["llama_bpe"] = "llama"
        paths.update(write_family_bases(folder))
        archs.update({f"{family}_clm": family for family in FAMILIES})
    return {name: path.read_bytes() for name, path in paths.items()}, archs


def write_family_bases(folder: Path) -> dict[str, Path]:
    """`{family}_clm`: a tiny CLM file of each of FAMILIES (the project's converter on
    tiny_families' expanded model; needs torch and transformers)."""
    import tiny_families

    quiet = io.StringIO()  # transformers' progress bars and the converter's pre-tokenizer warning
    with contextlib.redirect_stdout(quiet), contextlib.redirect_stderr(quiet):
        made = {family: tiny_families.make_family_files(folder / family, family, None) for family in FAMILIES}
    return {f"{family}_clm": files.files["clm_b"] for family, files in made.items()}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--cases", type=int, default=5000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds per case")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child_main()
        return
    from gguf_mutations import recipes

    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="clm-fuzz-") as work:
        bases, archs = write_bases(Path(work))
        chosen = recipes(args.seed, args.cases, bases, archs)
        outcomes = fuzz(chosen, bases, Path(work), case_timeout_s=args.timeout)
    failures = [(recipe, status) for recipe, status in outcomes if is_failure(status)]
    for recipe, status in failures:
        print(f"FAILED {status}: {json.dumps(recipe)}")
    counts = summarize([status for _, status in outcomes])
    print(
        f"{len(outcomes)} cases (seed {args.seed}, bases {', '.join(sorted(bases))}) in "
        f"{time.monotonic() - started:.0f} s: {counts}; failures: {len(failures)}"
    )
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).parent))
    main()
