"""`clm-local recipe default` and `clm-local eval-alpha`: the default model and its evidence."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from clm_local.errors import ClmError

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
    ship: Annotated[bool, typer.Option(help="Copy the trained P into clm_local/default_pre_layer/.")] = False,
    force: Annotated[bool, typer.Option(help="Empty WORK first if it holds an earlier run.")] = False,
) -> None:
    """Prompts -> sampled preference pairs -> DPO on P -> GGUF, every step logged.

    The other settings are fixed in clm_local/recipe/recipe.py (RecipeSettings), so that the
    shipped model has one recipe.
    """
    from clm_local.recipe.recipe import RecipeSettings, run_default_recipe

    settings = RecipeSettings(seed=seed, train_prompts=train_prompts)
    out = run_default_recipe(work, settings, ship=ship, force=force)
    typer.echo(f"default CLM model: {out}")


def _float_list(text: str) -> list[float]:
    try:
        return [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ClmError(f"--alphas takes comma-separated numbers, got {text!r}") from None


def eval_alpha(
    model: Annotated[Path | None, typer.Argument(help="A CLM GGUF (default: the default model).")] = None,
    alphas: str = typer.Option("-1,0,0.25,0.5,0.75,1,1.5,2,3", help="Comma-separated alphas."),
    mode: Annotated[str, typer.Option(help="logits, embed or both.")] = "both",
    n_prompts: Annotated[int, typer.Option(help="Held-out prompts to answer per alpha.")] = 20,
    max_tokens: Annotated[int, typer.Option(help="Token limit of an answer.")] = 128,
    seed: Annotated[int, typer.Option(help="Seed of the prompt split (the recipe's).")] = 0,
    threads: Annotated[
        int | None,
        typer.Option(help="llama.cpp threads (default: all cores, fewer while other programs take some)."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the rows as JSON on stdout.")] = False,
    plot: Annotated[Path | None, typer.Option(help="Write a PNG plot of both figures.")] = None,
) -> None:
    """Answer held-out prompts greedily at each alpha: conciseness (words) and a quality guard."""
    import clm_local
    from clm_local.default_model import default_model_path
    from clm_local.recipe import evaluate
    from clm_local.recipe.prompts import split_prompts

    modes = ["logits", "embed"] if mode == "both" else [mode]
    if any(m not in ("logits", "embed") for m in modes):
        raise ClmError(f"--mode must be logits, embed or both, got {mode!r}")
    if n_prompts < 1:
        raise ClmError("--n-prompts must be at least 1")
    prompts = split_prompts(seed).held_out[:n_prompts]
    with clm_local.load(model or default_model_path(), n_ctx=1024, n_threads=threads) as loaded:
        rows = evaluate.evaluate_alphas(loaded, prompts, _float_list(alphas), modes, max_tokens=max_tokens)
    if plot is not None:
        evaluate.plot(rows, plot)
    if as_json:
        typer.echo(json.dumps(evaluate.rows_as_json(rows)))
    else:
        typer.echo(evaluate.format_table(rows))


def register(app: typer.Typer) -> None:
    app.add_typer(recipe_app, name="recipe")
    app.command("eval-alpha")(eval_alpha)
