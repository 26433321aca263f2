"""The one exception type users see.

Every expected failure (bad file, bad argument, missing runtime) raises ClmError with a plain
one-line message. The CLI prints it as `error: ...` and exits 1; anything else is a bug.
"""

MAX_QUOTED_CHARS = 2000  # a message quoting a corrupt file's bytes stays readable


class ClmError(Exception):
    """A user-facing error with a one-line, plain-language message.

    Messages often quote a file's own text (a metadata key, a tensor name), which a corrupt file
    can fill with newlines and control characters: those are shown escaped (`\\n`, `\\x1d`), so the
    message stays one line whatever the file holds."""

    def __init__(self, message: str = "") -> None:
        super().__init__(printable(message))


def printable(text: str) -> str:
    """`text` on one line: characters that are not printable escaped as in a Python literal."""
    text = "".join(char if char.isprintable() else repr(char)[1:-1] for char in text)
    if len(text) > MAX_QUOTED_CHARS:
        text = text[: MAX_QUOTED_CHARS // 2] + " ... " + text[-MAX_QUOTED_CHARS // 2 :]
    return text
