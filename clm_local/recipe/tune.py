"""`clm-local recipe tune`: choose P's training settings by a rule fixed before any held-out number.

The candidates below are the levers tried against "P is too strong at alpha 1, so alpha past 1
breaks the text": a lower learning rate, fewer steps (early stopping at half the run), a larger
beta (a stronger pull towards the base), and SFT on the chosen answers first. Each is trained on
the recipe's pairs and answers the dev prompts (train prompts the recipe never samples) greedily,
in both modes, at alpha 1, 1.5 and 2; the base model answers them once.

The rule (`choose`), written down before the held-out prompts were answered by any candidate:
1. a mode of a candidate passes when its mean answer length falls strictly from alpha 1 to 1.5
   to 2, and at alpha 2 both guards hold: the base model's perplexity of the answers is at most
   1.5 times the base model's own, and the fraction of looping answers at most 1.5 times the
   base's plus one answer (a fraction of n prompts moves in steps of 1/n, and the base's may be 0);
2. a candidate is eligible when one of its modes passes;
3. the eligible candidate with the shortest answers at alpha 2 (in a passing mode) wins: the most
   alignment at the top of the dial that keeps the text intact; ties go to the earlier candidate.
No eligible candidate: no choice, and the recipe's settings stay as they are.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import asdict, dataclass
from pathlib import Path

from clm_local.errors import ClmError
from clm_local.files import write_json
from clm_local.recipe.cells import BASE, Cell, System, evaluate_systems, find
from clm_local.recipe.recipe import train_pre_layer

TUNE_ALPHAS = (1.0, 1.5, 2.0)
GUARD_FACTOR = 1.5
MODES = ("logits", "embed")

# name -> the training settings it changes, every one stated (so the list does not move when
# RecipeSettings' defaults do).
CANDIDATES: dict[str, dict[str, float | int]] = {
    "lr 5e-6, 2 epochs": {"lr": 5e-6, "epochs": 2, "beta": 0.1, "sft_epochs": 0},
    "lr 2.5e-6, 2 epochs": {"lr": 2.5e-6, "epochs": 2, "beta": 0.1, "sft_epochs": 0},
    "lr 5e-6, 1 epoch": {"lr": 5e-6, "epochs": 1, "beta": 0.1, "sft_epochs": 0},
    "beta 0.5": {"lr": 5e-6, "epochs": 2, "beta": 0.5, "sft_epochs": 0},
    "SFT, then lr 2.5e-6": {"lr": 2.5e-6, "epochs": 2, "beta": 0.1, "sft_epochs": 1},
}


@dataclass(frozen=True)
class Verdict:
    candidate: str
    passing_modes: list[str]
    words_at_2: float | None  # in the best passing mode


def guards_hold(cell: Cell, base: Cell) -> bool:
    """Both quality guards of the rule (point 1), on a cell's means against the base model's."""
    return (
        cell.base_ppl.mean <= GUARD_FACTOR * base.base_ppl.mean
        and cell.loops.mean <= GUARD_FACTOR * base.loops.mean + 1 / cell.n
    )


def mode_passes(cells: list[Cell], system: str, base: Cell) -> bool:
    words = [find(cells, system, alpha).words.mean for alpha in TUNE_ALPHAS]
    return words[0] > words[1] > words[2] and guards_hold(find(cells, system, TUNE_ALPHAS[-1]), base)


def judge(candidate: str, cells: list[Cell], base: Cell) -> Verdict:
    passing = [mode for mode in MODES if mode_passes(cells, f"{candidate}/{mode}", base)]
    words = [find(cells, f"{candidate}/{mode}", TUNE_ALPHAS[-1]).words.mean for mode in passing]
    return Verdict(candidate, passing, min(words) if words else None)


def choose(verdicts: list[Verdict]) -> str | None:
    eligible = [v for v in verdicts if v.words_at_2 is not None]
    return min(eligible, key=lambda v: v.words_at_2).candidate if eligible else None


def run_tune(
    work: Path,
    *,
    slots: int = 8,
    max_tokens: int = 128,
    threads: int | None = None,
    only: list[str] | None = None,
) -> dict:
    """Train and judge every candidate in WORK/tune/ (WORK: a `recipe default` folder); return the report."""
    import clm_local
    from clm_local.converters.convert import ConvertOptions, convert
    from clm_local.default_model import base_model_path
    from clm_local.recipe.answers import ClmSource, PlainSource, context_for, templated_prompts
    from clm_local.recipe.compare import logged_settings

    settings = logged_settings(work)
    dev = json.loads((work / "prompts.json").read_text())["dev"]
    if not dev:
        raise ClmError(f"{work} has no dev prompts: run `recipe default` with --dev-prompts")
    names = only or list(CANDIDATES)
    if unknown := [name for name in names if name not in CANDIDATES]:
        raise ClmError(f"unknown candidate {unknown[0]!r}; the candidates are {', '.join(CANDIDATES)}")
    base_path = base_model_path()
    folder = work / "tune"
    cells: list[Cell] = []
    prompts = templated_prompts(base_path, dev, threads)
    n_ctx = context_for(prompts, max_tokens)
    with clm_local.load(base_path, n_ctx=n_ctx, n_threads=threads, n_sequences=slots) as base:
        base_cells, _ = evaluate_systems(
            [System(BASE, PlainSource(base), [0.0])], prompts, base, max_tokens=max_tokens
        )
        cells += base_cells
        for name in names:
            candidate = dataclasses.replace(settings, **CANDIDATES[name])
            checkpoint = folder / _slug(name) / "ckpt"
            train_pre_layer(base_path, work / "train.jsonl", checkpoint, candidate)
            model_path = checkpoint.parent / "clm.gguf"
            convert(checkpoint, model_path, ConvertOptions(base=base_path, force=True))
            with clm_local.load(model_path, n_ctx=n_ctx, n_threads=threads, n_sequences=2 * slots) as model:
                systems = [System(f"{name}/{mode}", ClmSource(model, mode), TUNE_ALPHAS) for mode in MODES]
                mine, _ = evaluate_systems(systems, prompts, base, max_tokens=max_tokens)
            cells += mine
    verdicts = [judge(name, cells, base_cells[0]) for name in names]
    report = {
        "settings": asdict(settings),
        "candidates": {name: CANDIDATES[name] for name in names},
        "dev_prompts": len(dev),
        "cells": [asdict(cell) for cell in cells],
        "verdicts": [asdict(v) for v in verdicts],
        "choice": choose(verdicts),
    }
    write_json(folder / "tune.json", report)
    return report


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() or c in ".-" else "_" for c in name)
