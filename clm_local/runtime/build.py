"""Build and install the patched llama-cpp-python: `clm-local runtime install`.

The steps, each cached so only the first set-up pays for the compile:
1. fetch the pinned llama-cpp-python sdist from PyPI (it vendors llama.cpp);
2. apply `llama-cpp-pre-layer.patch` to `vendor/llama.cpp` (a failing hunk is named);
3. build a wheel for the chosen backend (CPU, Metal or CUDA compile flags), always with llama.cpp's
   RPC backend, and compile llama.cpp's `rpc-server` against the wheel's own libraries;
4. keep both under the cache, keyed by version, patch hash, build options, backend and machine;
5. pip-install the wheel into the running Python environment, with `ggml-rpc-server` beside its
   libraries (`clm-local rpc-server` runs it).
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from clm_local.errors import ClmError
from clm_local.files import cache_dir, copy_atomically

LLAMA_CPP_PYTHON_VERSION = "0.3.36"
PATCH_FILE = Path(__file__).with_name("llama-cpp-pre-layer.patch")
BUILD_INFO_NAME = "clm_local_build.json"  # written into the llama_cpp package of the wheel
RPC_SERVER_NAME = "ggml-rpc-server"  # llama.cpp's own target name for tools/rpc/rpc-server.cpp

# Only the shared libraries the Python package loads (no llava/mtmd, tools, tests or examples),
# plus the RPC backend, so that one model can be split across machines (`--rpc`).
_COMMON_CMAKE_ARGS = [
    "-DGGML_RPC=ON",
    "-DLLAVA_BUILD=OFF",
    "-DLLAMA_BUILD_TESTS=OFF",
    "-DLLAMA_BUILD_EXAMPLES=OFF",
    "-DLLAMA_BUILD_TOOLS=OFF",
    "-DLLAMA_BUILD_SERVER=OFF",
]
BACKEND_CMAKE_ARGS = {
    "cpu": [],
    "metal": ["-DGGML_METAL=on"],
    # only this machine's GPU architecture: minutes instead of most of an hour for every one
    "cuda": ["-DGGML_CUDA=on", "-DCMAKE_CUDA_ARCHITECTURES=native"],
}


@dataclass(frozen=True)
class BuildKey:
    """What a built wheel depends on; a change in any of these means a new build."""

    version: str
    patch_sha256: str
    options_sha256: str  # of the CMake arguments: a new build option is a new build
    backend: str
    machine: str

    @property
    def folder_name(self) -> str:
        return (
            f"llama_cpp_python-{self.version}-{self.patch_sha256[:12]}-{self.options_sha256[:8]}"
            f"-{self.backend}-{self.machine}"
        )


def patch_sha256() -> str:
    """The hash of the patch as shipped: it keys the wheel cache and is recorded in the build."""
    return hashlib.sha256(PATCH_FILE.read_bytes()).hexdigest()


def cmake_args(backend: str) -> list[str]:
    return [*_COMMON_CMAKE_ARGS, *BACKEND_CMAKE_ARGS[backend]]


def build_key(backend: str) -> BuildKey:
    if backend not in BACKEND_CMAKE_ARGS:
        raise ClmError(f"unknown backend {backend!r}: choose one of {', '.join(BACKEND_CMAKE_ARGS)}")
    options = hashlib.sha256(" ".join(cmake_args(backend)).encode()).hexdigest()
    return BuildKey(LLAMA_CPP_PYTHON_VERSION, patch_sha256(), options, backend, platform.machine().lower())


def _run(
    command: list[str], *, what: str, env: dict[str, str] | None = None, log: Path | None = None
) -> None:
    """Run a step; on failure say which step failed and where its output is."""
    if log is None:
        result = subprocess.run(command, env=env, capture_output=True, text=True)
        output = (result.stdout or "") + (result.stderr or "")
    else:
        with log.open("w") as out:
            result = subprocess.run(command, env=env, stdout=out, stderr=subprocess.STDOUT, text=True)
        output = log.read_text(errors="replace")
    if result.returncode != 0:
        last = [line for line in output.strip().splitlines() if line.strip()][-1:] or ["(no output)"]
        where = f" (full log: {log})" if log else ""
        raise ClmError(f"{what} failed: {last[0].strip()}{where}")


def fetch_sdist() -> Path:
    """The pinned sdist, downloaded once into the cache."""
    folder = cache_dir() / "downloads"
    sdist = folder / f"llama_cpp_python-{LLAMA_CPP_PYTHON_VERSION}.tar.gz"
    if not sdist.exists():
        folder.mkdir(parents=True, exist_ok=True)
        print(f"downloading llama-cpp-python {LLAMA_CPP_PYTHON_VERSION} (sdist) ...", file=sys.stderr)
        _run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--no-deps",
                "--no-binary",
                ":all:",
                "-d",
                str(folder),
                f"llama-cpp-python=={LLAMA_CPP_PYTHON_VERSION}",
            ],
            what="downloading the llama-cpp-python sdist",
        )
    if not sdist.exists():
        raise ClmError(f"pip did not produce {sdist.name} in {folder}")
    return sdist


def apply_patch(llama_cpp_dir: Path) -> None:
    """Apply the pre-layer patch, or name the file and hunk that do not apply."""
    if shutil.which("patch") is None:
        raise ClmError(
            "the `patch` program is needed to build the runtime: install it (e.g. apt install patch)"
        )
    base = ["patch", "-p1", "--forward", "--batch", "-d", str(llama_cpp_dir), "-i", str(PATCH_FILE)]
    check = subprocess.run([*base, "--dry-run"], capture_output=True, text=True)
    if check.returncode != 0:
        current_file, failures = "?", []
        for line in check.stdout.splitlines():
            named = re.match(r"(?:checking|patching) file (.+)", line)  # GNU patch: dry run, real run
            if named:
                current_file = named.group(1).strip()
            hunk = re.match(r"Hunk #(\d+) FAILED at (\d+)", line)
            if hunk:
                failures.append(f"{current_file} hunk #{hunk.group(1)} (at line {hunk.group(2)})")
        detail = ", ".join(failures) or (check.stdout + check.stderr).strip().splitlines()[-1]
        raise ClmError(f"{PATCH_FILE.name} does not apply to llama.cpp: {detail}")
    _run(base, what="applying the patch")


def build_wheel(key: BuildKey, jobs: int) -> Path:
    """Unpack, patch and compile; return the wheel, stored in the cache folder for this key."""
    out_dir = cache_dir() / "wheels" / key.folder_name
    sdist = fetch_sdist()
    with tempfile.TemporaryDirectory(prefix="clm-local-build-") as tmp:
        with tarfile.open(sdist) as archive:
            archive.extractall(tmp, filter="data")
        source = Path(tmp) / f"llama_cpp_python-{LLAMA_CPP_PYTHON_VERSION}"
        apply_patch(source / "vendor" / "llama.cpp")
        build_info = {
            "version": key.version,
            "patch_sha256": key.patch_sha256,
            "backend": key.backend,
            "rpc": True,
        }
        (source / "llama_cpp" / BUILD_INFO_NAME).write_text(json.dumps(build_info, indent=2) + "\n")

        env = dict(os.environ)
        env["CMAKE_ARGS"] = " ".join([*cmake_args(key.backend), env.get("CMAKE_ARGS", "")]).strip()
        env["CMAKE_BUILD_PARALLEL_LEVEL"] = str(jobs)
        staging = Path(tmp) / "wheel"
        log = cache_dir() / "build.log"
        print(
            f"building llama-cpp-python {key.version} with the pre-layer patch for {key.backend} "
            f"({jobs} jobs; log: {log}) ...",
            file=sys.stderr,
        )
        _run(
            [sys.executable, "-m", "pip", "wheel", "--no-deps", "-w", str(staging), str(source)],
            what=f"building the {key.backend} runtime",
            env=env,
            log=log,
        )
        wheels = list(staging.glob("llama_cpp_python-*.whl"))
        if len(wheels) != 1:
            raise ClmError(f"the build produced {len(wheels)} wheels instead of one (log: {log})")
        out_dir.mkdir(parents=True, exist_ok=True)
        server = build_rpc_server(source / "vendor" / "llama.cpp", wheels[0], Path(tmp))
        copy_atomically(server, out_dir / RPC_SERVER_NAME)
        final = out_dir / wheels[0].name  # last: a folder with a wheel is a finished build
        copy_atomically(wheels[0], final)
        return final


def build_rpc_server(llama_cpp_dir: Path, wheel: Path, tmp: Path) -> Path:
    """Compile llama.cpp's tools/rpc/rpc-server.cpp against the ggml libraries inside `wheel`.

    One source file that links ggml only: compiling it here costs seconds, where enabling
    llama.cpp's tools in the wheel's CMake build would compile every tool. Its run path is its own
    folder, so installed beside the wheel's libraries it loads exactly those.
    """
    libs = tmp / "wheel-libs"
    with zipfile.ZipFile(wheel) as archive:
        for name in archive.namelist():
            if name.startswith("llama_cpp/lib/"):
                archive.extract(name, libs)
    lib_dir = libs / "llama_cpp" / "lib"
    origin = "@loader_path" if sys.platform == "darwin" else "$ORIGIN"
    out = tmp / RPC_SERVER_NAME
    compiler = os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++") or shutil.which("clang++")
    if compiler is None:
        raise ClmError("a C++ compiler is needed to build the runtime (c++, g++ or clang++)")
    _run(
        [
            compiler,
            "-O2",
            "-std=c++17",
            f"-I{llama_cpp_dir / 'ggml' / 'include'}",
            str(llama_cpp_dir / "tools" / "rpc" / "rpc-server.cpp"),
            f"-L{lib_dir}",
            "-lggml",
            "-lggml-base",
            "-pthread",
            f"-Wl,-rpath,{origin}",
            *([] if sys.platform == "darwin" else [f"-Wl,-rpath-link,{lib_dir}"]),
            "-o",
            str(out),
        ],
        what="compiling llama.cpp's rpc-server",
    )
    return out


def cached_wheel(key: BuildKey) -> Path | None:
    folder = cache_dir() / "wheels" / key.folder_name
    wheels = sorted(folder.glob("*.whl"))
    return wheels[-1] if wheels and (folder / RPC_SERVER_NAME).is_file() else None


def install(backend: str = "cpu", *, rebuild: bool = False, jobs: int | None = None) -> Path:
    """Make the running environment's llama_cpp the patched build for `backend`; return the wheel."""
    key = build_key(backend)
    wheel = None if rebuild else cached_wheel(key)
    if wheel is None:
        wheel = build_wheel(key, jobs or os.cpu_count() or 2)
    else:
        print(f"using the cached build {wheel}", file=sys.stderr)
    # --no-deps: llama-cpp-python's own dependencies are clm-local's dependencies already.
    _run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--force-reinstall", str(wheel)],
        what="installing the runtime wheel",
    )
    installed = installed_library_dir()
    if installed is None:
        raise ClmError(f"pip installed {wheel.name} but Python cannot find llama_cpp afterwards")
    target = installed / RPC_SERVER_NAME
    copy_atomically(wheel.with_name(RPC_SERVER_NAME), target)
    return wheel


def installed_library_dir() -> Path | None:
    """The installed llama_cpp package's lib folder (found without importing llama_cpp)."""
    importlib.invalidate_caches()
    spec = importlib.util.find_spec("llama_cpp")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations))) / "lib"
