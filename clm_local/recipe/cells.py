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
from pathlib import Path

import numpy as np

from clm_local.errors import ClmError
from clm_local.recipe.answers import Job, LogitSource, Measures, greedy_answers, measure
from clm_local.runtime.model import ClmModel

BOOTSTRAP_RESAMPLES = 2000
BASE = "base"  # the system name of the base model, drawn as a band across alphas
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

    @classmethod
    def from_dict(cls, record: dict) -> Cell:
        """A cell from its JSON form (`dataclasses.asdict`)."""
        return cls(**{k: Interval(**v) if isinstance(v, dict) else v for k, v in record.items()})


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


def _interval(mean: float, low: float, high: float, digits: int) -> str:
    return f"{mean:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"


def format_table(cells: Sequence[Cell]) -> str:
    """A Markdown table: one line per (system, alpha), mean [95% interval] of every measure."""
    lines = [
        "| system | alpha | words | base ppl | ended | loops |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for c in cells:
        lines.append(
            f"| {c.system} | {c.alpha:g} | {_interval(*asdict(c.words).values(), 1)} | "
            f"{_interval(*asdict(c.base_ppl).values(), 2)} | {_interval(*asdict(c.ended).values(), 2)} | "
            f"{_interval(*asdict(c.loops).values(), 2)} |"
        )
    return "\n".join(lines)


def plot(cells: Sequence[Cell], path: Path) -> None:
    """Every measure against alpha with its interval, one line per system (the base: a band)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ClmError("the plot needs matplotlib: pip install 'clm-local[train]'") from None
    figure, axes = plt.subplots(2, 2, figsize=(11, 8))
    panels = [
        ("words", "mean answer length (words)"),
        ("base_ppl", "base-model perplexity (guard 1)"),
        ("ended", "answers that ended before the limit"),
        ("loops", "looping answers (guard 2)"),
    ]
    for axis, (column, label) in zip(axes.flat, panels, strict=True):
        for system in dict.fromkeys(c.system for c in cells):
            mine = [c for c in cells if c.system == system]
            values = [getattr(c, column) for c in mine]
            if system == BASE:  # one alpha: a horizontal band
                axis.axhspan(values[0].low, values[0].high, color="grey", alpha=0.2)
                axis.axhline(values[0].mean, color="grey", label=system)
                continue
            x = [c.alpha for c in mine]
            axis.errorbar(
                x,
                [v.mean for v in values],
                yerr=[[v.mean - v.low for v in values], [v.high - v.mean for v in values]],
                marker="o",
                capsize=3,
                label=system,
            )
        axis.set(xlabel="alpha", ylabel=label)
        axis.axvline(1, color="grey", lw=0.5, ls="--")
        axis.legend()
    axes[0][1].set_yscale("log")  # it grows by orders of magnitude once the text breaks
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
