"""The verdict of `recipe compare`, in plain words, from the held-out cells.

"At equal quality, which system reaches the strongest effect?": for each system, its cells (one per
alpha) whose means keep both guards of the rule (tune.guards_hold: base perplexity at most 1.5x the
base model's, loops at most 1.5x the base's plus one answer); of those, the one with the shortest
answers is the system's strongest effect within the guards.

"Is CLM comparable to full fine-tuning?": CLM's strongest guarded cell (either mode) against full
DPO's (either dial: DeRa's logit mix or ExPO's weight extrapolation; alpha 1 of both is full DPO
itself). The answer is yes when the 95% interval of the difference in words (a hierarchical
bootstrap of each side, seeds and prompts, drawn independently: the systems were trained apart)
includes 0, and no otherwise, saying which side is stronger. A yes is "not told apart at this
size", bounded by the interval: the interval is given with it. The same is said for each trained
model at its own alpha 1 (CLM's aligned path against full DPO itself).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict

from clm_local.recipe.cells import BASE, Cell, Interval, difference
from clm_local.recipe.tune import guards_hold

CLM_SYSTEMS = ("clm/logits", "clm/embed")
FULL_SYSTEMS = ("full-dpo/dera", "full-dpo/expo")


def strongest_guarded(cells: Sequence[Cell], system: str, base: Cell) -> Cell | None:
    """The system's cell with the shortest answers among those that keep the guards (ties: lower alpha)."""
    guarded = [c for c in cells if c.system == system and guards_hold(c, base)]
    return min(guarded, key=lambda c: (c.words.mean, c.alpha)) if guarded else None


def words_by_seed(records: Sequence[dict], cell: Cell) -> list[list[float]]:
    by_seed: dict[object, list[float]] = {}
    for r in records:
        if (r["system"], r["alpha"]) == (cell.system, cell.alpha):
            by_seed.setdefault(r.get("seed"), []).append(float(r["words"]))
    return list(by_seed.values())


def judge(cells: Sequence[Cell], records: Sequence[dict]) -> dict:
    """The verdict: each system's strongest guarded cell, the CLM-against-full-DPO differences, and
    the sentences that say it."""
    base = next(c for c in cells if c.system == BASE)
    systems = [s for s in dict.fromkeys(c.system for c in cells) if s != BASE]
    best = {system: strongest_guarded(cells, system, base) for system in systems}
    lines = [
        f"Quality guard: base perplexity at most {1.5 * base.base_ppl.mean:.2f} (1.5x the base's "
        f"{base.base_ppl.mean:.2f}) and looping fraction at most 1.5x the base's {base.loops.mean:.2f} plus "
        f"one answer, on the cell's means."
    ]
    ranked = sorted((cell.words.mean, system) for system, cell in best.items() if cell is not None)
    for _, system in ranked:
        cell = best[system]
        assert cell is not None
        lines.append(
            f"{system}: strongest within the guards at alpha {cell.alpha:g}, {_words(cell.words)} words "
            f"(perplexity {cell.base_ppl.mean:.2f}, loops {cell.loops.mean:.2f})."
        )
    lines += [f"{system}: no alpha keeps the guards." for system, cell in best.items() if cell is None]
    if ranked:
        lines.append(f"Strongest effect at equal quality: {ranked[0][1]}.")
    report: dict = {
        "best": {
            s: None if c is None else {"alpha": c.alpha, "words": asdict(c.words)} for s, c in best.items()
        }
    }
    clm = _best_of(best, CLM_SYSTEMS)
    full = _best_of(best, FULL_SYSTEMS)
    if clm is not None and full is not None:
        gap = difference(words_by_seed(records, clm), words_by_seed(records, full))
        report["at_equal_quality"] = _comparison(clm, full, gap)
        lines.append(
            "Is CLM comparable to full fine-tuning here? "
            + _sentence(
                report["at_equal_quality"],
                f"{clm.system} at alpha {clm.alpha:g}",
                f"{full.system} at alpha {full.alpha:g}",
            )
        )
    else:
        lines.append(
            "Is CLM comparable to full fine-tuning here? Not decidable: "
            "one side has no cell within the guards."
        )
    own = [_cell(cells, "clm/logits", 1.0), _cell(cells, "full-dpo/dera", 1.0)]
    if own[0] is not None and own[1] is not None:
        gap = difference(words_by_seed(records, own[0]), words_by_seed(records, own[1]))
        report["at_alpha_1"] = _comparison(own[0], own[1], gap)
        lines.append(
            "Each trained model as it is (alpha 1): " + _sentence(report["at_alpha_1"], "CLM", "full DPO")
        )
    report["lines"] = lines
    return report


def _best_of(best: dict[str, Cell | None], systems: Sequence[str]) -> Cell | None:
    found = [cell for system, cell in best.items() if system in systems and cell is not None]
    return min(found, key=lambda c: c.words.mean) if found else None


def _cell(cells: Sequence[Cell], system: str, alpha: float) -> Cell | None:
    return next((c for c in cells if c.system == system and c.alpha == alpha), None)


def _comparison(clm: Cell, full: Cell, gap: Interval) -> dict:
    if gap.low <= 0 <= gap.high:
        outcome = "comparable"
    else:
        outcome = "clm weaker" if gap.low > 0 else "clm stronger"
    return {
        "clm": {"system": clm.system, "alpha": clm.alpha, "words": asdict(clm.words)},
        "full": {"system": full.system, "alpha": full.alpha, "words": asdict(full.words)},
        "words_difference": asdict(gap),  # CLM minus full DPO: below 0, CLM's answers are shorter
        "outcome": outcome,
    }


def _sentence(comparison: dict, clm: str, full: str) -> str:
    gap = Interval.from_dict(comparison["words_difference"])
    answer = {
        "comparable": "yes: the interval includes 0",
        "clm weaker": f"no: {full} is stronger (shorter answers)",
        "clm stronger": f"no: {clm} is stronger (shorter answers)",
    }[comparison["outcome"]]
    return (
        f"{answer}. {clm} {comparison['clm']['words']['mean']:.1f} words against {full} "
        f"{comparison['full']['words']['mean']:.1f}; difference {_words(gap)} words "
        "(95% interval over seeds and prompts)."
    )


def _words(interval: Interval) -> str:
    return f"{interval.mean:.1f} [{interval.low:.1f}, {interval.high:.1f}]"
