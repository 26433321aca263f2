"""`clm-local`: the command line. Each verb lives in its own module and registers itself here.

Heavy imports (torch, llama_cpp) happen inside the commands, so `clm-local --help` stays fast.
Expected failures raise ClmError and end as one `error: ...` line with exit code 1; a mistyped
command line (`--alpha abc`) is one `error: ...` line too, with exit code 2.
"""

from __future__ import annotations

import sys

import typer
from clm_local.cli import (
    bench_cmd,
    chat_cmd,
    convert_cmd,
    recipe_cmd,
    rpc_cmd,
    runtime_cmd,
    serve_cmd,
    train_cmd,
)
from clm_local.cli.options import use_plain_usage

from clm_local.errors import ClmError

try:  # recent typer carries its own copy of click; earlier versions use click itself
    from typer._click import exceptions as click_exceptions
except ImportError:
    from click import exceptions as click_exceptions

# `clm-local` alone shows the help through this error in click 8.2 and later (nothing earlier).
NoArgsIsHelp = getattr(click_exceptions, "NoArgsIsHelpError", ())

EXIT_INTERRUPTED = 130  # what a shell reports for a process ended by Ctrl-C (SIGINT)

app = typer.Typer(
    help="Alignment control (CLM) for local models: train a pre-layer, convert it into one GGUF, "
    "and run it with an alpha dial.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # plain help: no boxes, no `<bool>` placeholders on flags
    add_completion=False,
)

for module in (runtime_cmd, train_cmd, convert_cmd, chat_cmd, recipe_cmd, bench_cmd, serve_cmd, rpc_cmd):
    module.register(app)
use_plain_usage(app)


def run() -> None:
    """Console-script entry point: every ending is one line on stderr at most, never a traceback."""
    try:
        code = app(standalone_mode=False)
    except ClmError as error:
        _exit(f"error: {error}", 1)
    except NoArgsIsHelp as request:
        request.show()
        sys.exit(2)
    except click_exceptions.UsageError as error:
        command = error.ctx.command_path if error.ctx else "clm-local"
        _exit(f"error: {error.format_message()} (see {command} --help)", 2)
    except (KeyboardInterrupt, typer.Abort):  # typer before 0.2x turns Ctrl-C into Abort
        code = EXIT_INTERRUPTED
    if code == EXIT_INTERRUPTED:  # recent typer returns 130 for Ctrl-C, silently
        _exit("interrupted", EXIT_INTERRUPTED)
    sys.exit(code if isinstance(code, int) else 0)


def _exit(message: str, code: int) -> None:
    print(message, file=sys.stderr)
    sys.exit(code)


if __name__ == "__main__":
    run()
