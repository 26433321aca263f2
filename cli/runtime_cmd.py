"""`clm-local runtime install|status`: build the patched llama.cpp and say what is installed."""

from __future__ import annotations

import typer

from clm_local.runtime import build, library

runtime_app = typer.Typer(
    help="Build, install and inspect the patched llama.cpp runtime.", no_args_is_help=True
)


@runtime_app.command("install")
def install(
    backend: str = typer.Option("cpu", help="cpu, metal (Apple GPUs) or cuda (NVIDIA GPUs)."),
    rebuild: bool = typer.Option(False, help="Compile again even if a cached wheel exists."),
    jobs: int = typer.Option(0, help="Parallel compile jobs (default: all cores)."),
) -> None:
    """Download llama-cpp-python, apply the pre-layer patch, build it (cached) and install it."""
    wheel = build.install(backend, rebuild=rebuild, jobs=jobs or None)
    typer.echo(f"installed the patched runtime ({backend}) from {wheel}")


@runtime_app.command("status")
def status() -> None:
    """Show the installed llama-cpp-python, its backend and whether it has the CLM hook."""
    found = library.status()
    if found.llama_cpp_python is None:
        typer.echo(f"runtime: not installed ({library.INSTALL_HINT})")
        raise typer.Exit(1)
    patch_state = "matches this clm-local" if found.patch_sha256 == build.patch_sha256() else "differs"
    typer.echo(f"llama-cpp-python: {found.llama_cpp_python}")
    typer.echo(f"library:          {found.library_path}")
    typer.echo(f"backend:          {found.backend or 'unknown (not built by clm-local)'}")
    typer.echo(f"gpu offload:      {'yes' if found.gpu_offload else 'no'}")
    typer.echo(
        f"rpc (--rpc):      {'yes' if found.rpc else 'no (an older build: clm-local runtime install)'}"
    )
    typer.echo(f"pre-layer hook:   {'present' if found.has_hook else 'MISSING'}")
    if found.patch_sha256:
        typer.echo(f"patch:            {found.patch_sha256[:12]} ({patch_state})")
    if not found.has_hook:
        typer.echo(library.INSTALL_HINT)
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    app.add_typer(runtime_app, name="runtime")
