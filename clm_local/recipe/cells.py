"""Systems answering prompts at alphas, summarised per (system, alpha) cell with bootstrap intervals.

Shared by `recipe tune` (dev prompts) and `recipe compare` (held-out prompts): every system answers
every prompt at each of its alphas (answers.py), and each cell reports the mean and a 95%
percentile-bootstrap interval over the prompts of the four measures.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

from clm_local.recipe.answers import Job, LogitSource, Measures, greedy_answers, measure
from clm_local.runtime.model import ClmModel

BOOTSTRAP_RESAMPLES = 2000
MEASURES = ("words", "base_ppl", "ended", "loops")


@dataclass(frozen=True)
class Interval:
    mean: float
    low: float  # 2.5th percentile of the bootstrap means
    high: float  # 97.5th


@dataclass(frozen=True)
class Cell:
    system: str
    alpha: float
    n: int  # prompts answered
    words: Interval
    base_ppl: Interval
    ended: Interval  # fraction of answers that ended before the token limit
    loops: Interval  # fraction of answers that repeat a word 4-gram three times


@dataclass(frozen=True)
class System:
    name: str
    source: LogitSource
    alphas: Sequence[float]


def bootstrap(values: Sequence[float], *, seed: int = 0) -> Interval:
    """Mean and 95% percentile-bootstrap interval of the values, NaNs (unscored answers) left out."""
    data = np.asarray(values, dtype=np.float64)
    data = data[~np.isnan(data)]
    if not len(data):
        return Interval(math.nan, math.nan, math.nan)
    draws = np.random.default_rng(seed).integers(0, len(data), (BOOTSTRAP_RESAMPLES, len(data)))
    low, high = np.percentile(data[draws].mean(axis=1), [2.5, 97.5])
    return Interval(float(data.mean()), float(low), float(high))


def summarise(system: str, alpha: float, measures: Sequence[Measures]) -> Cell:
    columns = {name: [float(getattr(m, name)) for m in measures] for name in MEASURES}
    return Cell(system, alpha, len(measures), **{name: bootstrap(values) for name, values in columns.items()})


def evaluate_systems(
    systems: Sequence[System],
    prompts: Sequence[list[int]],
    base: ClmModel,
    *,
    max_tokens: int,
    progress: bool = True,
) -> tuple[list[Cell], list[dict]]:
    """Every system's cells, and one record per answer (system, alpha, prompt index, text, measures)."""
    cells, records = [], []
    for system in systems:
        jobs = [Job(prompt, alpha) for alpha in system.alphas for prompt in prompts]
        answers = greedy_answers(system.source, jobs, base, max_tokens=max_tokens)
        measures, texts = measure(base, jobs, answers)
        for k, alpha in enumerate(system.alphas):
            mine = slice(k * len(prompts), (k + 1) * len(prompts))
            cell = summarise(system.name, alpha, measures[mine])
            cells.append(cell)
            if progress:
                print(f"  {describe(cell)}", file=sys.stderr)
            for index, (text, measured) in enumerate(zip(texts[mine], measures[mine], strict=True)):
                records.append(
                    {"system": system.name, "alpha": alpha, "prompt": index, "text": text} | asdict(measured)
                )
    return cells, records


def describe(cell: Cell) -> str:
    return (
        f"{cell.system:12s} alpha={cell.alpha:5.2f}  words={cell.words.mean:6.1f}  "
        f"base ppl={cell.base_ppl.mean:8.2f}  ended={cell.ended.mean:4.2f}  loops={cell.loops.mean:4.2f}"
    )


def find(cells: Sequence[Cell], system: str, alpha: float) -> Cell:
    return next(c for c in cells if c.system == system and c.alpha == alpha)
