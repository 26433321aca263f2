"""`clm-local recipe default` and `clm-local eval-alpha`: the default model and its evidence."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Annotated

import typer
from clm_local.cli.options import Threads

from clm_local.errors import ClmError
from clm_local.recipe.recipe import RecipeSettings

recipe_app = typer.Typer(help="Rebuild the project's default CLM model from scratch.", no_args_is_help=True)


@recipe_app.command("default")
def default(
    work: Annotated[Path, typer.Option(help="Folder for data, checkpoint, model and log.")] = Path(
        "recipe-work"
    ),
    seed: Annotated[int, typer.Option(help="Seed of the prompt split, the sampling and the training.")] = 0,
    train_prompts: Annotated[
        int | None, typer.Option(help="Use only this many train prompts (default: all).", show_default=False)
    ] = None,
    dev_prompts: Annotated[
        int, typer.Option(help="Train prompts kept aside for `recipe tune` (never sampled).")
    ] = RecipeSettings.dev_prompts,
    ship: Annotated[bool, typer.Option(help="Copy the trained P into clm_local/default_pre_layer/.")] = False,
    force: Annotated[bool, typer.Option(help="Empty WORK first if it holds an earlier run.")] = False,
) -> None:
    """Prompts -> sampled preference pairs -> SFT and DPO on P -> GGUF, every step logged.

    The other settings are fixed in clm_local/recipe/recipe.py (RecipeSettings), so that the
    shipped model has one recipe.
    """
    from clm_local.recipe.recipe import run_default_recipe

    settings = RecipeSettings(seed=seed, train_prompts=train_prompts, dev_prompts=dev_prompts)
    out = run_default_recipe(work, settings, ship=ship, force=force)
    typer.echo(f"default CLM model: {out}")


EVAL_SLOTS = 8  # answers decoded side by side (two sequences each in logits mode)
WorkFolder = Annotated[Path, typer.Argument(help="A finished `recipe default` folder (--work).")]


@recipe_app.command("tune")
def tune(
    work: WorkFolder,
    candidate: Annotated[
        list[str] | None, typer.Option(help="Only this candidate (repeatable; default: all).")
    ] = None,
    max_tokens: Annotated[int, typer.Option(help="Token limit of an answer.")] = 128,
    threads: Threads = None,
) -> None:
    """Train each candidate setting on WORK's pairs and choose one by the rule in recipe/tune.py."""
    from clm_local.recipe.cells import Cell, format_table
    from clm_local.recipe.tune import run_tune

    report = run_tune(work, max_tokens=max_tokens, threads=threads, only=candidate)
    typer.echo(format_table([Cell.from_dict(cell) for cell in report["cells"]]))
    for verdict in report["verdicts"]:
        typer.echo(f"{verdict['candidate']}: passing modes {verdict['passing_modes'] or 'none'}")
    typer.echo(f"choice: {report['choice'] or 'none (no candidate passes the rule)'}")


@recipe_app.command("compare")
def compare(
    work: WorkFolder,
    seeds: Annotated[int, typer.Option(help="Trainings per system at its chosen learning rate.")] = 3,
    clm_lrs: Annotated[
        str, typer.Option(help="CLM's learning-rate grid for the sweep (comma-separated).")
    ] = "2.5e-6,5e-6,1e-5",
    full_lrs: Annotated[
        str, typer.Option(help="Full-model DPO's learning-rate grid for the sweep (comma-separated).")
    ] = "6.25e-7,1.25e-6,2.5e-6",
    alphas: str = typer.Option("0.5,1,1.5,2,3", help="Comma-separated alphas of CLM, DeRa and ExPO."),
    n_prompts: Annotated[
        int | None, typer.Option(help="Held-out prompts to answer (default: all).", show_default=False)
    ] = None,
    max_tokens: Annotated[int, typer.Option(help="Token limit of an answer (sweep and held out).")] = 128,
    sweep_only: Annotated[
        bool, typer.Option(help="Stop once the sweep has chosen (sweep.json), before any held-out answer.")
    ] = False,
    publish: Annotated[
        Path | None,
        typer.Option(
            help="Also copy the report to this folder as fair-compare.{json,md,png}.", show_default=False
        ),
    ] = None,
    quick: Annotated[
        bool,
        typer.Option(
            help="A CI-sized run in WORK/compare-quick: 2 CLM rates and 1 full-DPO rate, 2 seeds, "
            "3 prompts, alphas 1 and 2, 16 tokens."
        ),
    ] = False,
    threads: Threads = None,
) -> None:
    """CLM against full-model DPO (DeRa mix, ExPO) and the base, each at its best learning rate.

    A learning-rate sweep picks each system's rate on the dev prompts by the rule in
    recipe/sweep.py; then each system trains SEEDS times and answers the held-out prompts. Resumable:
    run it again after a stop and it keeps every finished training and answer set (WORK/compare).
    """
    from clm_local.recipe import compare as comparison

    settings = {
        "alphas": _float_list(alphas),
        "n_prompts": n_prompts,
        "max_tokens": max_tokens,
        "seeds": seeds,
        "lrs": {"clm": _float_list(clm_lrs, "--clm-lrs"), "full-dpo": _float_list(full_lrs, "--full-lrs")},
    }
    folder = work / "compare"
    if quick:
        settings |= comparison.QUICK
        folder = work / "compare-quick"
    if settings["n_prompts"] is not None and settings["n_prompts"] < 1:
        raise ClmError("--n-prompts must be at least 1")
    if any(lr <= 0 for grid in settings["lrs"].values() for lr in grid) or not all(settings["lrs"].values()):
        raise ClmError("--clm-lrs and --full-lrs take positive learning rates")
    report = comparison.run_compare(work, threads=threads, folder=folder, sweep_only=sweep_only, **settings)
    if sweep_only:
        from clm_local.recipe.sweep import format_sweep

        typer.echo(format_sweep(report["sweep"]))
        typer.echo(f"chosen: {json.dumps(report['sweep']['chosen'])} (in {folder / 'sweep.json'})")
    else:
        typer.echo((folder / "compare.md").read_text(), nl=False)
    if publish is not None:
        for path in comparison.publish(folder, publish):
            typer.echo(f"wrote {path}")


def _float_list(text: str, option: str = "--alphas") -> list[float]:
    try:
        return [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ClmError(f"{option} takes comma-separated numbers, got {text!r}") from None


def eval_alpha(
    model: Annotated[Path | None, typer.Argument(help="A CLM GGUF (default: the default model).")] = None,
    alphas: str = typer.Option("-1,0,0.25,0.5,0.75,1,1.5,2,3", help="Comma-separated alphas."),
    mode: Annotated[str, typer.Option(help="logits, embed or both.")] = "both",
    n_prompts: Annotated[int, typer.Option(help="Held-out prompts to answer per alpha.")] = 20,
    max_tokens: Annotated[int, typer.Option(help="Token limit of an answer.")] = 128,
    seed: Annotated[int, typer.Option(help="Seed of the prompt split (the recipe's).")] = 0,
    threads: Threads = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the rows as JSON on stdout.")] = False,
    plot: Annotated[Path | None, typer.Option(help="Write a PNG plot of both figures.")] = None,
) -> None:
    """Answer held-out prompts greedily at each alpha: conciseness (words) and a quality guard."""
    import clm_local
    from clm_local.default_model import default_model_path
    from clm_local.recipe import cells
    from clm_local.recipe.answers import ClmSource, context_for, templated_prompts
    from clm_local.recipe.prompts import split_prompts

    modes = ["logits", "embed"] if mode == "both" else [mode]
    if any(m not in ("logits", "embed") for m in modes):
        raise ClmError(f"--mode must be logits, embed or both, got {mode!r}")
    if n_prompts < 1:
        raise ClmError("--n-prompts must be at least 1")
    path = model or default_model_path()
    prompts = templated_prompts(path, split_prompts(seed).held_out[:n_prompts], threads)
    n_ctx = context_for(prompts, max_tokens)
    with clm_local.load(path, n_ctx=n_ctx, n_threads=threads, n_sequences=2 * EVAL_SLOTS) as loaded:
        systems = [cells.System(m, ClmSource(loaded, m), _float_list(alphas)) for m in modes]
        found, _ = cells.evaluate_systems(systems, prompts, loaded, max_tokens=max_tokens)
    if plot is not None:
        cells.plot(found, plot)
    if as_json:
        typer.echo(json.dumps([asdict(cell) for cell in found]))
    else:
        typer.echo(cells.format_table(found))


def register(app: typer.Typer) -> None:
    app.add_typer(recipe_app, name="recipe")
    app.command("eval-alpha")(eval_alpha)
