"""`clm-local bench`: time the base model, both CLM modes and the two-model alternative.

The work lives in clm_local.benchmarks; this module maps options to its settings and prints the
Markdown tables, or with --json only the JSON object on stdout (progress always goes to stderr).
`--busy` and `--first-token` add the busy-machine and cold-start comparisons (busy.py,
first_token.py), each measured side by side in the same run.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from clm_local.benchmarks.settings import BenchSettings
from clm_local.cli.options import Rpc, Threads, model_file

DEFAULTS = BenchSettings()


def register(app: typer.Typer) -> None:
    """Add `bench` to the app."""
    app.command()(bench)


def bench(
    model: Annotated[
        Path | None,
        typer.Argument(help="A CLM GGUF (default: the embedded default model).", show_default=False),
    ] = None,
    prompt_tokens: Annotated[int, typer.Option(help="Length of the synthetic prompt.")] = (
        DEFAULTS.prompt_tokens
    ),
    gen_tokens: Annotated[
        int, typer.Option(help="Tokens generated greedily (end-of-generation does not stop it).")
    ] = DEFAULTS.gen_tokens,
    threads: Threads = DEFAULTS.threads,
    repeat: Annotated[int, typer.Option(help="Runs of every configuration, interleaved.")] = DEFAULTS.repeat,
    ctx: Annotated[
        int, typer.Option(help="Context per sequence (chat's default): sets the KV cache size.")
    ] = DEFAULTS.n_ctx,
    alpha: Annotated[float, typer.Option(help="Alpha of the embed, logits and two_model runs.")] = (
        DEFAULTS.alpha
    ),
    busy: Annotated[
        bool, typer.Option("--busy", help="Also: decode speed with a busy-looping process next to it.")
    ] = False,
    first_token: Annotated[
        bool, typer.Option("--first-token", help="Also: time to first token from a cold process.")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as one JSON object.")] = False,
    rpc: Rpc = None,
) -> None:
    """Prefill and decode speed and peak memory: base, embed, logits and two_model."""
    from clm_local.benchmarks.busy import format_busy, run_busy
    from clm_local.benchmarks.first_token import format_first_token, run_first_token
    from clm_local.benchmarks.report import format_markdown
    from clm_local.benchmarks.suite import run_benchmark

    from clm_local import default_model
    from clm_local.runtime.rpc import parse_endpoints

    settings = BenchSettings(
        prompt_tokens=prompt_tokens,
        gen_tokens=gen_tokens,
        threads=threads,
        repeat=repeat,
        n_ctx=ctx,
        alpha=alpha,
        rpc=tuple(parse_endpoints(rpc)) if rpc is not None else (),
    )
    settings.check()  # before the default model is fetched
    if model is not None:
        _check_model(model)  # before any work is announced
    path = model if model is not None else default_model.default_model_path()

    def progress(line: str) -> None:
        print(line, file=sys.stderr)

    result = run_benchmark(path, settings, progress=progress)
    sections = [format_markdown(result)]
    if busy:
        result["busy"] = run_busy(
            path, tokens=settings.gen_tokens, repeat=settings.repeat, alpha=settings.alpha, progress=progress
        )
        sections.append(format_busy(result["busy"]))
    if first_token:
        result["first_token"] = run_first_token(path, repeat=settings.repeat, progress=progress)
        sections.append(format_first_token(result["first_token"]))
    print(json.dumps(result, indent=2) if as_json else "\n\n".join(sections))


def _check_model(path: Path) -> None:
    """Refuse a file the benchmark cannot use (missing, a folder, not a valid GGUF, no pre-layer)."""
    from clm_local.errors import ClmError
    from clm_local.runtime.model import read_info

    if not read_info(model_file(path)).is_clm:
        raise ClmError(
            f"{path} has no CLM pre-layer: the benchmark compares the alignment modes of a CLM file "
            "(make one with `clm-local convert`)"
        )
