"""Standard output that its reader may close early (`clm-local chat ... | head -c 20`).

click turns a broken pipe into a silent exit 1, which reads as a failure; the reader simply had
all it wanted. Output written inside `reader_may_leave()` ends the program quietly with the
status a shell gives a process ended by SIGPIPE, and nothing on stderr.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator

EXIT_BROKEN_PIPE = 141


@contextlib.contextmanager
def reader_may_leave() -> Iterator[None]:
    try:
        yield
    except BrokenPipeError:
        # Point stdout at /dev/null so that Python's own flush at exit does not fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        raise SystemExit(EXIT_BROKEN_PIPE) from None
