"""The one exception type users see.

Every expected failure (bad file, bad argument, missing runtime) raises ClmError with a plain
one-line message. The CLI prints it as `error: ...` and exits 1; anything else is a bug.
"""


class ClmError(Exception):
    """A user-facing error with a one-line, plain-language message."""
