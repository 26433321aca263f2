"""The trainings of `recipe compare`: one folder each, finished once, reused ever after.

A run is one system (`clm`: P only, recipe.py's training; `full-dpo`: every weight, full_dpo.py)
trained on the recipe's pairs at one learning rate with one seed. Everything else is the recipe's
settings; the seed sets the order in which each epoch visits the pairs (`randperm(seed + epoch)`
in both trainers; nothing else in either training is random: P starts as an exact copy, and
neither model has dropout). The pairs themselves are the recipe's, sampled once with its seed:
every run of every system learns from the same data.

A run's learning rate is DPO's; the SFT stage before it (when the recipe has one) keeps the
recipe's ratio of the two (sft_lr = lr * recipe sft_lr / recipe lr), so one number sets how far a
run moves its weights.

Each run trains in a child process of its own, so that its peak memory is its own (the parent
answers prompts between trainings), and a crash or Ctrl-C ends only that run. Its folder,
WORK/<compare folder>/runs/<system>-lr<lr>-seed<seed>/, receives `done.json` last (the model's
path and what the training cost); a folder without it is a run that stopped part way, emptied and
trained again next time. A run with the recipe's own settings reuses what the recipe run trained
(the shipped P) or what an earlier `recipe compare` trained (WORK/full-dpo.gguf) instead.
"""

from __future__ import annotations

import dataclasses
import json
import multiprocessing
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from clm_local.errors import ClmError
from clm_local.files import write_json
from clm_local.recipe.recipe import RecipeSettings

SYSTEMS = ("clm", "full-dpo")
DONE = "done.json"


@dataclass(frozen=True)
class Run:
    system: str  # one of SYSTEMS
    lr: float
    seed: int

    @property
    def name(self) -> str:
        return f"{self.system}-lr{self.lr:g}-seed{self.seed}"


@dataclass(frozen=True)
class Trained:
    run: Run
    model: Path  # the GGUF to answer with: a CLM file, or the full-DPO F32 file
    cost: dict  # parameters, steps, seconds, peak_rss_bytes
    reused: str | None  # what it reuses, when it was not trained in its folder


def run_settings(settings: RecipeSettings, run: Run) -> RecipeSettings:
    """The recipe's settings with the run's learning rate (SFT's scaled alike) and seed."""
    if run.lr == settings.lr:
        return dataclasses.replace(settings, seed=run.seed)
    return dataclasses.replace(
        settings, lr=run.lr, sft_lr=run.lr * settings.sft_lr / settings.lr, seed=run.seed
    )


def trained(
    work: Path, folder: Path, run: Run, settings: RecipeSettings, threads: int | None = None
) -> Trained:
    """The finished run: read from its folder (or the recipe's outputs), else trained now."""
    if run.system not in SYSTEMS:
        raise ClmError(f"unknown system {run.system!r}; the systems are {', '.join(SYSTEMS)}")
    place = folder / "runs" / run.name
    done = place / DONE
    if not done.is_file():
        reused = _reusable(work, run, settings)
        if reused is None:
            _train(work, place, run, run_settings(settings, run), threads)
        else:
            place.mkdir(parents=True, exist_ok=True)
            write_json(place / DONE, reused)
    record = json.loads(done.read_text())
    return Trained(run, work / record["model"], record["cost"], record.get("reused"))


def _reusable(work: Path, run: Run, settings: RecipeSettings) -> dict | None:
    """The done record of an earlier training with exactly this run's settings, if WORK has one."""
    if run.lr != settings.lr or run.seed != settings.seed:
        return None
    if run.system == "clm" and (work / "default-clm.gguf").is_file():
        from clm_local.recipe.compare import clm_cost

        return {"model": "default-clm.gguf", "cost": clm_cost(work), "reused": "the recipe run's P"}
    full, cost = work / "full-dpo.gguf", work / "full-dpo-cost.json"
    if run.system == "full-dpo" and full.is_file() and cost.is_file():
        return {"model": full.name, "cost": json.loads(cost.read_text()), "reused": "an earlier full-DPO run"}
    return None


def _train(work: Path, place: Path, run: Run, settings: RecipeSettings, threads: int | None) -> None:
    if place.exists():  # a run that stopped part way: start it over
        shutil.rmtree(place)
    place.mkdir(parents=True)
    print(f"[compare] training {run.name} (lr {settings.lr:g}, SFT lr {settings.sft_lr:g})", file=sys.stderr)
    child = multiprocessing.get_context("spawn").Process(
        target=train_in_child, args=(str(work), str(place), run.system, asdict(settings), threads)
    )
    child.start()
    child.join()
    if child.exitcode != 0 or not (place / DONE).is_file():
        raise ClmError(f"training {run.name} failed (exit code {child.exitcode}); its output is above")


def train_in_child(work: str, place: str, system: str, settings: dict, threads: int | None) -> None:
    """One run, in its own process: train, write the model, then `done.json` (last)."""
    import torch

    from clm_local.default_model import base_model_path
    from clm_local.recipe.recipe import peak_rss_bytes

    if threads:
        torch.set_num_threads(threads)
    here, data, base = Path(place), Path(work) / "train.jsonl", base_model_path()
    recipe = RecipeSettings(**settings)
    model = here / "model.gguf"
    if system == "clm":
        from clm_local.converters.convert import ConvertOptions, convert
        from clm_local.recipe.compare import checkpoint_cost
        from clm_local.recipe.recipe import train_pre_layer

        started = time.monotonic()
        train_pre_layer(base, data, here / "ckpt", recipe)
        seconds = round(time.monotonic() - started, 1)
        convert(here / "ckpt", model, ConvertOptions(base=base, force=True))
        cost = checkpoint_cost(here / "ckpt") | {"seconds": seconds, "peak_rss_bytes": peak_rss_bytes()}
    else:
        from clm_local.recipe.full_dpo import train_full_dpo

        cost = asdict(train_full_dpo(base, data, model, recipe))
    write_json(here / DONE, {"model": str(model.relative_to(work)), "cost": cost, "settings": settings})
