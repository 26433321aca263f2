"""Options that several commands share, declared once so that they read the same everywhere."""

from __future__ import annotations

from typing import Annotated

import typer

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
