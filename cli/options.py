"""Options that several commands share, declared once so that they read the same everywhere, and
the command class and model-file check that every command uses."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any

import typer
from typer.core import TyperArgument, TyperCommand

from clm_local.errors import ClmError

Threads = Annotated[
    int | None,
    typer.Option(
        "--threads",
        help="CPU threads (default: every core; chat and serve use fewer while other programs take some).",
        show_default=False,
    ),
]
Mode = Annotated[
    str | None,
    typer.Option(
        help="logits (the paper's mix) or embed (one pass) (default: the file's).", show_default=False
    ),
]
Rpc = Annotated[
    str | None,
    typer.Option(
        "--rpc",
        metavar="HOST:PORT[,HOST:PORT...]",
        help="llama.cpp rpc-servers (`clm-local rpc-server` on each host) that hold the model's layers, "
        "before any local GPU. Unauthenticated and unencrypted: a trusted network or a tunnel only.",
        show_default=False,
    ),
]


class Command(TyperCommand):
    """A command whose usage line names its arguments in capitals without braces, as usage lines
    usually do (`clm-local train [OPTIONS] BASE DATA`): this typer writes `{base} {data}`."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        for param in self.params:
            if isinstance(param, TyperArgument) and param.metavar is None and param.name:
                param.metavar = param.name.upper()

    def collect_usage_pieces(self, ctx: Any) -> list[str]:
        return [re.sub(r"^\{(.*)\}", r"\1", piece) for piece in super().collect_usage_pieces(ctx)]


def use_plain_usage(app: typer.Typer) -> None:
    """Give every command of `app` and of its groups the Command class (unless it names its own)."""
    for info in app.registered_commands:
        if info.cls in (None, TyperCommand):
            info.cls = Command
    for group in app.registered_groups:
        if group.typer_instance is not None:
            use_plain_usage(group.typer_instance)


def model_file(path: Path) -> Path:
    """`path`, refused at once when it is a folder: a GGUF model is one file, and a folder (a
    training checkpoint, a Hugging Face model) becomes one with `clm-local convert`."""
    if path.is_dir():
        raise ClmError(
            f"{path} is a folder, not a GGUF file: make one with `clm-local convert {path} model.gguf`"
        )
    return path
