"""The interactive `clm-local chat`: read a line, stream the answer, obey /commands.

The prompt shows the current alpha and mode, so the dial is always in view. Ctrl-C stops the
answer being written (the part already written stays in the conversation), end of input leaves.
Answers go to stdout, status and errors to stderr.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import TextIO

from clm_local.chat.session import ChatSession
from clm_local.errors import ClmError

HELP = """\
/alpha X             set alpha: 0 is the base model, 1 the aligned one, above 1 stronger
                     (/alpha alone shows it)
/mode logits|embed   how alpha is applied (logits: free to change; embed: one pass, recomputes)
                     (/mode alone shows it)
/system TEXT         set the system message (/system alone removes it)
/reset               start a new conversation (the system message stays)
/help                this list
/quit                leave (so does Ctrl-D); Ctrl-C stops an answer"""


def prompt_text(session: ChatSession) -> str:
    if not session.model.info.is_clm:
        return "[plain model] > "
    return f"[alpha {session.alpha:g} {session.mode}] > "


def run_repl(
    session: ChatSession,
    *,
    read: Callable[[str], str] = input,
    out: TextIO = sys.stdout,
    err: TextIO = sys.stderr,
) -> None:
    """Chat until /quit or end of input."""
    try:
        import readline  # noqa: F401 - gives input() line editing and history where available
    except ImportError:
        pass
    while True:
        try:
            line = read(prompt_text(session)).strip()
        except EOFError:
            print(file=out)
            return
        except KeyboardInterrupt:
            print("\n(/quit or Ctrl-D leaves)", file=err)
            continue
        try:
            if not line.startswith("/"):
                if line:
                    _answer(session, line, out, err)
            elif not _command(session, line, err):
                return
        except ClmError as error:
            print(f"error: {error}", file=err)


def _answer(session: ChatSession, text: str, out: TextIO, err: TextIO) -> None:
    pieces = session.ask(text)
    try:
        for piece in pieces:
            out.write(piece)
            out.flush()
    except KeyboardInterrupt:
        pieces.close()  # records the answer as far as it was written
        out.write("\n")
        print("(stopped)", file=err)
        return
    out.write("\n")
    if session.answer_was_cut:
        print(f"(cut at {session.max_tokens} tokens: --max-tokens sets the length)", file=err)


def _command(session: ChatSession, line: str, err: TextIO) -> bool:
    """Run one /command; False means leave."""
    name, _, argument = line.partition(" ")
    argument = argument.strip()
    if name == "/quit":
        return False
    if name == "/help":
        print(HELP, file=err)
    elif name == "/alpha" and not argument:
        print(f"alpha is {session.alpha:g} (/alpha X sets it)", file=err)
    elif name == "/alpha":
        try:
            alpha = float(argument)
        except ValueError:
            raise ClmError(f"/alpha needs a number, e.g. /alpha 0.8 (got {argument!r})") from None
        session.set_alpha(alpha)
    elif name == "/mode" and not argument:
        print(f"mode is {session.mode} (/mode logits|embed sets it)", file=err)
    elif name == "/mode":
        session.set_mode(argument)
    elif name == "/system":
        session.set_system(argument or None)
        print("system message set" if argument else "system message removed", file=err)
    elif name == "/reset":
        session.reset()
        print("new conversation", file=err)
    else:
        raise ClmError(f"unknown command {name}: /help lists the commands")
    return True
