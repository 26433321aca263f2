"""`clm-local`: the command line. Each verb lives in its own module and registers itself here.

Heavy imports (torch, llama_cpp) happen inside the commands, so `clm-local --help` stays fast.
Expected failures raise ClmError and end as one `error: ...` line with exit code 1.
"""

from __future__ import annotations

import sys

import typer
from clm_local.cli import bench_cmd, chat_cmd, convert_cmd, recipe_cmd, runtime_cmd, serve_cmd, train_cmd

from clm_local.errors import ClmError

app = typer.Typer(
    help="Alignment control (CLM) for local models: train a pre-layer, convert it into one GGUF, "
    "and run it with an alpha dial.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

for module in (runtime_cmd, train_cmd, convert_cmd, chat_cmd, recipe_cmd, bench_cmd, serve_cmd):
    module.register(app)


def run() -> None:
    """Console-script entry point: run the app, turning ClmError into one line and exit code 1."""
    try:
        app()
    except ClmError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    run()
