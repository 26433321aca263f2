"""`clm-local convert` and `clm-local info`: make one CLM GGUF, and describe any GGUF.

The work lives in clm_local.converters; this module only maps options to it (imported inside
the commands, so `clm-local --help` stays fast).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated

import typer
from clm_local.cli.pipes import reader_may_leave

DEFAULT_MODEL = "default"  # `clm-local info default`: the embedded default model


def register(app: typer.Typer) -> None:
    """Add `convert` and `info` to the app."""
    app.command()(convert)
    app.command()(info)


def convert(
    source: Annotated[
        Path,
        typer.Argument(
            help="A training checkpoint folder (clm-local train), a Hugging Face folder in the expanded "
            "layout (block 0 = P), or a GGUF made by llama.cpp's converter from such a folder.",
            show_default=False,
        ),
    ],
    out: Annotated[Path, typer.Argument(help="The GGUF file to write.", show_default=False)],
    base: Annotated[
        Path | None,
        typer.Option(
            help="Checkpoints: the base GGUF to graft onto (default: the base recorded at training)."
        ),
    ] = None,
    force_base: Annotated[
        bool,
        typer.Option(
            "--force-base", help="Checkpoints: graft even if the base is not the file P was trained on."
        ),
    ] = False,
    outtype: Annotated[
        str,
        typer.Option(
            "--outtype",
            "--pre-layer-type",
            help="Type of converted tensors (P for a checkpoint, all for a folder): auto (keep each "
            "tensor's float type), f32, f16, bf16 or q8_0. Norms and biases stay f32. "
            "--pre-layer-type is another name for it.",
        ),
    ] = "auto",
    quantize: Annotated[
        str | None,
        typer.Option(
            help="Quantize the whole result, P and base blocks, with llama.cpp's quantizer (e.g. Q4_K_M); "
            "needs an F16/BF16/F32 base. To keep a quantized base as it is, graft without this."
        ),
    ] = None,
    name: Annotated[
        str | None,
        typer.Option(
            help="Checkpoints: the model's display name (general.name); default: the base's name, "
            "then 'CLM' and the checkpoint folder's name.",
            show_default=False,
        ),
    ] = None,
    alpha_default: Annotated[float, typer.Option(help="Alpha the runtime uses when none is given.")] = 1.0,
    mix_default: Annotated[str, typer.Option(help="How alpha mixes by default: logits or embed.")] = "logits",
    pre_layers: Annotated[
        int, typer.Option(help="Folders and GGUF sources: how many leading blocks are pre-layers.")
    ] = 1,
    trust_layout: Annotated[
        bool,
        typer.Option(
            "--trust-layout",
            help="Folders and GGUF sources: take the first blocks as pre-layers even if they do not "
            "look like copies of the first base block.",
        ),
    ] = False,
    force: Annotated[bool, typer.Option("--force", help="Replace OUT if it exists.")] = False,
) -> None:
    """Write one GGUF with the pre-layer that the patched runtime and a stock llama.cpp both load."""
    from clm_local.converters.convert import ConvertOptions
    from clm_local.converters.convert import convert as run_convert
    from clm_local.converters.info import format_info, read_info

    options = ConvertOptions(
        outtype=outtype,
        alpha_default=alpha_default,
        mix_default=mix_default,
        pre_layers=pre_layers,
        base=base,
        force_base=force_base,
        name=name,
        quantize=quantize,
        force=force,
        trust_layout=trust_layout,
    )
    started = time.perf_counter()
    kind = run_convert(source, out, options)
    typer.echo(f"converted the {kind.value} {source} in {time.perf_counter() - started:.1f} s")
    typer.echo(format_info(read_info(out)))


def info(
    file: Annotated[
        Path,
        typer.Argument(
            help="A GGUF file, or `default`: the embedded default model (with the path of its base "
            "GGUF, which `clm-local train default` trains on).",
            show_default=False,
        ),
    ],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")] = False,
    check_values: Annotated[
        bool, typer.Option("--check-values", help="Also decode every tensor and name those with NaN or Inf.")
    ] = False,
) -> None:
    """Describe a GGUF: architecture, blocks, pre-layer, defaults, provenance, tensor types, sizes."""
    from clm_local.converters.info import format_info, read_info

    base = None
    if str(file) == DEFAULT_MODEL and not file.exists():
        from clm_local import default_model

        file, base = default_model.default_model_path(), default_model.base_model_path()
    details = read_info(file, check_values=check_values)
    if as_json:
        text = json.dumps(details.to_json() | ({"base_file": str(base)} if base else {}), indent=2)
    else:
        text = format_info(details)
        if base is not None:
            hint = "(`clm-local train default DATA -o CKPT` trains on it)"
            text += f"\n{'base file':<14}{base}\n{'':<14}{hint}"
    with reader_may_leave():
        typer.echo(text)
