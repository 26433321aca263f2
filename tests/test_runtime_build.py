"""The patch and its build plumbing: applies cleanly, names the hunk when it does not, cache keys."""

from __future__ import annotations

import re
import tarfile
from pathlib import Path

import pytest

from clm_local import ClmError
from clm_local.runtime import build, library

PATCHED_FILES = sorted(set(re.findall(r"^\+\+\+ b/(\S+)", build.PATCH_FILE.read_text(), flags=re.M)))


@pytest.fixture()
def llama_cpp_sources(tmp_path: Path) -> Path:
    """The files the patch touches, unpacked from the pinned sdist into a scratch llama.cpp tree."""
    sdist = build.fetch_sdist()
    prefix = f"llama_cpp_python-{build.LLAMA_CPP_PYTHON_VERSION}/vendor/llama.cpp/"
    with tarfile.open(sdist) as archive:
        for name in PATCHED_FILES:
            member = archive.getmember(prefix + name)
            target = tmp_path / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(archive.extractfile(member).read())
    return tmp_path


def test_the_patch_is_small_and_touches_no_architecture_file() -> None:
    added = [line for line in build.PATCH_FILE.read_text().splitlines() if line.startswith("+ ")]
    assert len(added) < 350
    assert not any(name.startswith("src/models/") for name in PATCHED_FILES)


def test_the_patch_applies_to_the_pinned_llama_cpp(llama_cpp_sources: Path) -> None:
    build.apply_patch(llama_cpp_sources)
    assert "build_pre_layer_blend" in (llama_cpp_sources / "src/llama-graph.cpp").read_text()


def test_a_failing_hunk_is_named(llama_cpp_sources: Path) -> None:
    graph = llama_cpp_sources / "src/llama-graph.cpp"
    graph.write_text(graph.read_text().replace("return cvec->apply_to(ctx0, cur, il);", "return cur;"))
    with pytest.raises(ClmError, match=r"does not apply to llama.cpp: src/llama-graph.cpp hunk #\d+"):
        build.apply_patch(llama_cpp_sources)


def test_the_cache_key_follows_version_patch_and_backend() -> None:
    cpu, cuda = build.build_key("cpu"), build.build_key("cuda")
    assert cpu.patch_sha256 == build.patch_sha256()
    assert cpu.folder_name != cuda.folder_name
    assert build.LLAMA_CPP_PYTHON_VERSION in cpu.folder_name
    with pytest.raises(ClmError, match="unknown backend"):
        build.build_key("vulkan")


def test_the_installed_runtime_is_this_patch() -> None:
    status = library.status()
    assert status.has_hook
    assert status.patch_sha256 == build.patch_sha256()
