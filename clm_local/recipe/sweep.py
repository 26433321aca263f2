"""The learning-rate sweep of `recipe compare`: each system at its best, by one rule fixed in advance.

CLM and full DPO learn the same pairs, but one learning rate moves 3.5 M weights of one block in
one case and all 134.5 M in the other, so a shared value favours neither by design and one of
them by accident (the first comparison, at the recipe's 2.5e-6 for both, had full DPO past the
quality guard at its own alpha 1 and CLM well inside it at alpha 2). So each system is trained at
several learning rates (seed: the recipe's), answers the dev prompts (train prompts the recipe
never sampled, not held out) greedily at alpha 1, its own trained model, and the rule picks one:

RULE (written down, with the grids below, before any held-out prompt was answered):
1. a learning rate passes when, at alpha 1 on the dev prompts, both guards of `recipe tune` hold:
   the base model's perplexity of the answers at most 1.5 times its perplexity of its own answers,
   and the fraction of looping answers at most 1.5 times the base's plus one answer;
2. of the passing learning rates, the one with the shortest mean answer (the strongest effect of
   the preference) is chosen; a tie goes to the lower rate;
3. none passing: the lowest learning rate of the grid, flagged in the report (the grid should
   then reach lower).
It succeeds tune.py's rule, which judged P at alpha 2: here each system is judged where it is a
trained model of its own (alpha 1: CLM's aligned path, full DPO itself), so the rule favours no
dial; the dials (CLM's alpha, DeRa's and ExPO's) are measured afterwards on the held-out prompts.

The grids (a factor 2 apart, each holding the recipe's 2.5e-6 and reaching a factor 4 from it in
the direction the first comparison points):
- CLM: 2.5e-6, 5e-6, 1e-5. 2.5e-6 is the recipe's rate (chosen by `recipe tune` to leave room past
  alpha 1) and was well inside the guards at alpha 1 on held-out prompts; P at 5e-6 without SFT
  held them at alpha 1 but broke them at alpha 2 (a stronger pull, like training harder); 5e-5
  collapsed P. Up to 1e-5 the grid brackets the guard's edge from below.
- full DPO: 6.25e-7, 1.25e-6, 2.5e-6. At 2.5e-6 full DPO broke the guard at its own alpha 1
  (perplexity 1.8x the base's), while its logit mix at alpha 0.5 (DeRa: about the DPO optimum of a
  twice larger beta, a weaker pull) held it at 1.15x; so the edge lies between a half and the whole
  of 2.5e-6, and the grid goes down a factor 4.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from clm_local.errors import ClmError
from clm_local.files import write_json
from clm_local.recipe.cells import BASE, Cell, cells_from_records
from clm_local.recipe.recipe import RecipeSettings
from clm_local.recipe.runs import Run, trained
from clm_local.recipe.tune import guards_hold

CLM_LRS = (2.5e-6, 5e-6, 1e-5)
FULL_LRS = (6.25e-7, 1.25e-6, 2.5e-6)
SWEEP_ALPHA = 1.0
RULE = (
    "At alpha 1 on the dev prompts, a learning rate passes when the base model's perplexity of the "
    "answers is at most 1.5x the base model's own and the looping fraction at most 1.5x the base's "
    "plus one answer; the passing rate with the shortest answers wins (ties: the lower rate); none "
    "passing: the lowest rate, flagged."
)


@dataclass(frozen=True)
class LrVerdict:
    system: str
    lr: float
    words: float
    base_ppl: float
    loops: float
    passes: bool


def cell_name(system: str, lr: float) -> str:
    return f"{system} lr {lr:g}"


def judge(cells: Sequence[Cell], base: Cell, system: str, lrs: Sequence[float]) -> list[LrVerdict]:
    verdicts = []
    for lr in lrs:
        cell = next(c for c in cells if c.system == cell_name(system, lr))
        verdict = LrVerdict(
            system, lr, cell.words.mean, cell.base_ppl.mean, cell.loops.mean, guards_hold(cell, base)
        )
        verdicts.append(verdict)
    return verdicts


def choose(verdicts: Sequence[LrVerdict]) -> tuple[float, bool]:
    """The rule: (the chosen learning rate, whether one passed)."""
    passing = [v for v in verdicts if v.passes]
    if passing:
        return min(passing, key=lambda v: (v.words, v.lr)).lr, True
    return min(v.lr for v in verdicts), False


def run_sweep(
    work: Path,
    folder: Path,
    settings: RecipeSettings,
    lrs: dict[str, Sequence[float]],
    *,
    max_tokens: int,
    slots: int,
    threads: int | None,
) -> dict:
    """Train every (system, lr) at the recipe's seed, judge on the dev prompts, write sweep.json.

    A finished sweep (its sweep.json) is the choice: read back, never redone. Asked for other
    grids or another answer length than it was made with, it refuses rather than choose again.
    """
    from clm_local.recipe.answer_sets import AnswerStore

    done = folder / "sweep.json"
    wanted = {"lrs": {system: list(grid) for system, grid in lrs.items()}, "max_tokens": max_tokens}
    if done.is_file():
        report = json.loads(done.read_text())
        if {key: report[key] for key in wanted} != wanted:
            raise ClmError(
                f"{done} chose with {json.dumps({key: report[key] for key in wanted})}, not "
                f"{json.dumps(wanted)}: the rule's choice stands (remove the file to sweep again)"
            )
        return report
    dev = json.loads((work / "prompts.json").read_text())["dev"]
    if not dev:
        raise ClmError(f"{work} has no dev prompts: run `recipe default` with --dev-prompts")
    runs = [Run(system, lr, settings.seed) for system, grid in lrs.items() for lr in grid]
    models = {run: trained(work, folder, run, settings, threads) for run in runs}
    print(f"[compare] the sweep answers {len(dev)} dev prompts", file=sys.stderr)
    store = AnswerStore(
        folder / f"sweep-answers-{max_tokens}t", dev, max_tokens, slots=slots, threads=threads
    )
    records = store.answer_set("base", None, BASE, [0.0], store.plain)
    for run, model in models.items():
        # CLM in embed mode at alpha 1 is its aligned path, one sequence per answer
        make = store.clm("embed") if run.system == "clm" else store.plain
        name = cell_name(run.system, run.lr)
        records += store.answer_set(run.name, None, name, [SWEEP_ALPHA], make, model.model)
    store.close()
    cells = cells_from_records(records)
    base = next(c for c in cells if c.system == BASE)
    verdicts = {system: judge(cells, base, system, grid) for system, grid in lrs.items()}
    choices = {system: choose(found) for system, found in verdicts.items()}
    report = wanted | {
        "rule": RULE,
        "seed": settings.seed,
        "dev_prompts": len(dev),
        "cells": [asdict(cell) for cell in cells],
        "verdicts": {system: [asdict(v) for v in found] for system, found in verdicts.items()},
        "chosen": {system: lr for system, (lr, _) in choices.items()},
        "passed": {system: passed for system, (_, passed) in choices.items()},
        "costs": {
            run.name: model.cost | ({"reused": model.reused} if model.reused else {})
            for run, model in models.items()
        },
    }
    write_json(done, report)
    return report


def format_sweep(report: dict) -> str:
    lines = ["| system | lr | words | base ppl | loops | guards hold |", "|---|---:|---:|---:|---:|---|"]
    for system, found in report["verdicts"].items():
        for v in found:
            mark = " **(chosen)**" if v["lr"] == report["chosen"][system] else ""
            lines.append(
                f"| {system} | {v['lr']:g}{mark} | {v['words']:.1f} | {v['base_ppl']:.2f} | "
                f"{v['loops']:.2f} | {'yes' if v['passes'] else 'no'} |"
            )
    return "\n".join(lines)
