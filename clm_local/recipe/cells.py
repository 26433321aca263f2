"""Systems answering prompts at alphas, summarised per (system, alpha) cell with bootstrap intervals.

Shared by `recipe tune` (dev prompts) and `recipe compare` (held-out prompts): every system answers
every prompt at each of its alphas (answers.py), and each cell reports the mean and a 95%
percentile-bootstrap interval over the prompts of the four measures.

A system trained with several seeds (`recipe compare`) answers the same prompts once per seed. Its
cell's mean is the mean of the seeds' means, and its interval comes from a hierarchical bootstrap
(`hierarchical_bootstrap`): each resample draws the seeds with replacement, then the prompts with
replacement within each drawn seed, so the interval holds the variation between trainings as well
as between prompts. Each seed's own mean is kept in the cell (`Interval.per_seed`).
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
    per_seed: tuple[float, ...] = ()  # each seed's mean (cells of several trainings; else empty)

    @classmethod
    def from_dict(cls, record: dict) -> Interval:
        return cls(**(record | {"per_seed": tuple(record.get("per_seed", ()))}))


@dataclass(frozen=True)
class Cell:
    system: str
    alpha: float
    n: int  # prompts answered
    words: Interval
    base_ppl: Interval
    ended: Interval  # fraction of answers that ended before the token limit
    loops: Interval  # fraction of answers that repeat a word 4-gram three times
    seeds: int = 1  # trainings the cell pools (its answers: n per seed)

    @classmethod
    def from_dict(cls, record: dict) -> Cell:
        """A cell from its JSON form (`dataclasses.asdict`)."""
        return cls(**{k: Interval.from_dict(v) if isinstance(v, dict) else v for k, v in record.items()})


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


def bootstrap_replicates(per_seed: Sequence[Sequence[float]], rng: np.random.Generator) -> np.ndarray:
    """BOOTSTRAP_RESAMPLES means of the two-stage resample: seeds with replacement, then each drawn
    seed's values (prompts) with replacement; every seed weighs the same. NaNs are left out and a
    seed with no value at all with them; no value anywhere: an empty array."""
    groups = [data[~np.isnan(data)] for data in (np.asarray(g, dtype=np.float64) for g in per_seed)]
    groups = [g for g in groups if len(g)]
    if not groups:
        return np.empty(0)
    count = len(groups)
    resamples = np.arange(BOOTSTRAP_RESAMPLES)[:, None]
    # within[s, b, k]: a prompt resample of seed s, for the k-th seed drawn in resample b (a seed
    # drawn twice in one resample gets two independent prompt resamples)
    within = np.stack(
        [g[rng.integers(0, len(g), (BOOTSTRAP_RESAMPLES, count, len(g)))].mean(axis=2) for g in groups]
    )
    drawn = rng.integers(0, count, (BOOTSTRAP_RESAMPLES, count))
    return within[drawn, resamples, np.arange(count)[None, :]].mean(axis=1)


def hierarchical_bootstrap(per_seed: Sequence[Sequence[float]], *, seed: int = 0) -> Interval:
    """Mean of the seeds' means and the 95% interval of `bootstrap_replicates`; per_seed kept."""
    means = [_mean(values) for values in per_seed]
    replicates = bootstrap_replicates(per_seed, np.random.default_rng(seed))
    if not len(replicates):
        return Interval(math.nan, math.nan, math.nan, tuple(means))
    low, high = np.percentile(replicates, [2.5, 97.5])
    return Interval(_mean(means), float(low), float(high), tuple(means))


def _mean(values: Sequence[float]) -> float:
    data = np.asarray(values, dtype=np.float64)
    data = data[~np.isnan(data)]
    return float(data.mean()) if len(data) else math.nan


def difference(first: Sequence[Sequence[float]], second: Sequence[Sequence[float]]) -> Interval:
    """first's mean minus second's, with the 95% interval of the difference of independent
    hierarchical resamples (two systems trained apart: their seeds are not paired)."""
    a = bootstrap_replicates(first, np.random.default_rng(1))
    b = bootstrap_replicates(second, np.random.default_rng(2))
    if not (len(a) and len(b)):
        return Interval(math.nan, math.nan, math.nan)
    mean = hierarchical_bootstrap(first).mean - hierarchical_bootstrap(second).mean
    low, high = np.percentile(a - b, [2.5, 97.5])
    return Interval(mean, float(low), float(high))


def summarise(system: str, alpha: float, measures: Sequence[Measures]) -> Cell:
    columns = {name: [float(getattr(m, name)) for m in measures] for name in MEASURES}
    return Cell(system, alpha, len(measures), **{name: bootstrap(values) for name, values in columns.items()})


def summarise_seeds(system: str, alpha: float, by_seed: Sequence[Sequence[Measures]]) -> Cell:
    """One cell of a system trained with several seeds: every seed answered the same prompts."""
    columns = {name: [[float(getattr(m, name)) for m in seed] for seed in by_seed] for name in MEASURES}
    intervals = {name: hierarchical_bootstrap(values) for name, values in columns.items()}
    return Cell(system, alpha, max(len(seed) for seed in by_seed), **intervals, seeds=len(by_seed))


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
        mine = answer_records(system, prompts, base, max_tokens=max_tokens)
        for alpha in system.alphas:
            cell = summarise(system.name, alpha, [to_measures(r) for r in mine if r["alpha"] == alpha])
            cells.append(cell)
            if progress:
                print(f"  {describe(cell)}", file=sys.stderr)
        records += mine
    return cells, records


def answer_records(
    system: System, prompts: Sequence[list[int]], base: ClmModel, *, max_tokens: int
) -> list[dict]:
    """The system's greedy answer to every prompt at each of its alphas, measured: one record each
    (system, alpha, prompt index, text, measures), alpha by alpha."""
    jobs = [Job(prompt, alpha) for alpha in system.alphas for prompt in prompts]
    answers = greedy_answers(system.source, jobs, base, max_tokens=max_tokens)
    measures, texts = measure(base, jobs, answers)
    return [
        {"system": system.name, "alpha": job.alpha, "prompt": k % len(prompts), "text": text}
        | asdict(measured)
        for k, (job, text, measured) in enumerate(zip(jobs, texts, measures, strict=True))
    ]


def cells_from_records(records: Sequence[dict]) -> list[Cell]:
    """One cell per (system, alpha) of the records, in the order they first appear, pooling the
    seeds (`record["seed"]`, in their order of appearance) with `summarise_seeds`."""
    groups: dict[tuple[str, float], dict[object, list[Measures]]] = {}
    for record in records:
        by_seed = groups.setdefault((record["system"], record["alpha"]), {})
        by_seed.setdefault(record.get("seed"), []).append(to_measures(record))
    return [
        summarise_seeds(system, alpha, list(by_seed.values())) for (system, alpha), by_seed in groups.items()
    ]


def to_measures(record: dict) -> Measures:
    return Measures(**{name: record[name] for name in Measures.__dataclass_fields__})


def describe(cell: Cell) -> str:
    return (
        f"{cell.system:12s} alpha={cell.alpha:5.2f}  words={cell.words.mean:6.1f}  "
        f"base ppl={cell.base_ppl.mean:8.2f}  ended={cell.ended.mean:4.2f}  loops={cell.loops.mean:4.2f}"
    )


def find(cells: Sequence[Cell], system: str, alpha: float) -> Cell:
    return next(c for c in cells if c.system == system and c.alpha == alpha)


def _interval(interval: Interval, digits: int) -> str:
    return f"{interval.mean:.{digits}f} [{interval.low:.{digits}f}, {interval.high:.{digits}f}]"


def format_table(cells: Sequence[Cell]) -> str:
    """A Markdown table: one line per (system, alpha), mean [95% interval] of every measure."""
    lines = [
        "| system | alpha | words | base ppl | ended | loops |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    seeded = any(len(c.words.per_seed) > 1 for c in cells)
    if seeded:
        lines = [lines[0][:-1] + "| words by seed |", lines[1] + "---:|"]
    for c in cells:
        line = (
            f"| {c.system} | {c.alpha:g} | {_interval(c.words, 1)} | {_interval(c.base_ppl, 2)} | "
            f"{_interval(c.ended, 2)} | {_interval(c.loops, 2)} |"
        )
        if seeded:
            line += " " + " / ".join(f"{value:.1f}" for value in c.words.per_seed) + " |"
        lines.append(line)
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
    systems = [system for system in dict.fromkeys(c.system for c in cells) if system != BASE]
    for axis, (column, label) in zip(axes.flat, panels, strict=True):
        for c in cells:
            if c.system == BASE:  # one alpha: a horizontal band
                value = getattr(c, column)
                axis.axhspan(value.low, value.high, color="grey", alpha=0.2)
                axis.axhline(value.mean, color="grey", label=BASE)
        for k, system in enumerate(systems):
            mine = [c for c in cells if c.system == system]
            values = [getattr(c, column) for c in mine]
            shift = 0.03 * (k - (len(systems) - 1) / 2)  # side by side, so that the bars stay readable
            x = [c.alpha + shift for c in mine]
            line = axis.errorbar(
                x,
                [v.mean for v in values],
                yerr=[[v.mean - v.low for v in values], [v.high - v.mean for v in values]],
                marker="o",
                capsize=3,
                label=system,
            )
            seeds = [
                (xi, s) for xi, v in zip(x, values, strict=True) if len(v.per_seed) > 1 for s in v.per_seed
            ]
            if seeds:  # each seed's own mean: the spread between trainings
                axis.scatter(*zip(*seeds, strict=True), s=8, color=line[0].get_color(), alpha=0.5)
        axis.set(xlabel="alpha", ylabel=label)
        axis.axvline(1, color="grey", lw=0.5, ls="--")
        axis.legend()
    axes[0][1].set_yscale("log")  # it grows by orders of magnitude once the text breaks
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
