"""clm_local.files.atomic_file: the one way clm-local replaces a file that someone else reads.

A reader sees the old file or the new one, never half of one; a write that fails (an error, a
full disk, Ctrl-C) leaves the old file as it was and no temporary file behind.
"""

from __future__ import annotations

import json
import os
import stat
import threading
from pathlib import Path

import pytest

from clm_local.files import atomic_file, copy_atomically, write_json, write_text


def test_a_finished_write_replaces_the_file_and_leaves_nothing_else(tmp_path: Path) -> None:
    target = tmp_path / "report.json"
    target.write_text("old")
    write_json(target, {"pairs": 3, "name": "café"}, durable=True)
    assert json.loads(target.read_text(encoding="utf-8")) == {"pairs": 3, "name": "café"}
    assert [p.name for p in tmp_path.iterdir()] == ["report.json"]


@pytest.mark.parametrize("failure", [OSError(28, "No space left on device"), KeyboardInterrupt()])
def test_a_failed_write_keeps_the_old_file_and_removes_the_temporary(tmp_path: Path, failure) -> None:
    target = tmp_path / "dials.json"
    target.write_text("old")
    with pytest.raises(type(failure)):
        with atomic_file(target) as temporary:
            temporary.write_text("half of the new")
            raise failure
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["dials.json"]


def test_the_new_file_has_the_usual_mode_and_a_copy_keeps_its_source_mode(tmp_path: Path) -> None:
    mask = os.umask(0o022)
    try:
        write_text(tmp_path / "plain.txt", "x")
        source = tmp_path / "tool"
        source.write_text("#!/bin/sh\n")
        source.chmod(0o755)
        copy_atomically(source, tmp_path / "copy")
    finally:
        os.umask(mask)
    assert stat.S_IMODE((tmp_path / "plain.txt").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "copy").stat().st_mode) == 0o755


def test_concurrent_writers_never_leave_a_torn_file(tmp_path: Path) -> None:
    target = tmp_path / "shared.json"
    texts = [json.dumps({"writer": n, "fill": "x" * 100_000}) for n in range(4)]
    seen: list[str] = []
    done = threading.Event()

    def read() -> None:
        while not done.is_set():
            if target.exists():
                seen.append(target.read_text())

    def write(text: str) -> None:
        for _ in range(20):
            write_text(target, text)

    reader = threading.Thread(target=read)
    reader.start()
    writers = [threading.Thread(target=write, args=(text,)) for text in texts]
    for writer in writers:
        writer.start()
    for writer in writers:
        writer.join()
    done.set()
    reader.join()
    assert seen and all(text in texts for text in seen)
    assert [p.name for p in tmp_path.iterdir()] == ["shared.json"]


def test_the_converters_output_turns_a_full_disk_into_one_line_and_keeps_the_old_file(tmp_path: Path) -> None:
    from clm_local.converters.gguf_io import atomic_output

    from clm_local.errors import ClmError

    out = tmp_path / "model.gguf"
    out.write_text("old")
    with pytest.raises(ClmError, match=r"model.gguf already exists \(use --force"):
        with atomic_output(out, force=False):
            pass
    with pytest.raises(ClmError, match=r"writing .*model.gguf failed: No space left on device$"):
        with atomic_output(out, force=True) as temporary:
            assert temporary.exists()  # created before the body: an unwritable folder fails first
            raise OSError(28, "No space left on device")
    assert out.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["model.gguf"]
