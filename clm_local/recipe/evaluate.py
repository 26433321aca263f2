"""`clm-local eval-alpha`: how the preference moves with alpha, on held-out prompts.

For each mode and alpha, every held-out prompt is answered greedily (answers.py: several prompts
and alphas per llama.cpp batch), then two numbers are averaged over the prompts:
- metric: the measured property of the default preference, the answer's length in words
  (lower = more concise = more aligned);
- guard: the base model's perplexity of the answer (the file at alpha 0 is the base model), which
  rises when extrapolation breaks the text (loops, gibberish).
`recipe compare` reports the same measures with intervals, and two more, against other systems.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from clm_local.errors import ClmError
from clm_local.recipe.answers import ClmSource
from clm_local.recipe.cells import System, evaluate_systems
from clm_local.runtime.model import ClmModel


@dataclass(frozen=True)
class AlphaRow:
    alpha: float
    mode: str
    metric: float  # mean answer length in words
    guard: float  # mean perplexity of the answers under the base model
    n: int  # prompts answered


def evaluate_alphas(
    model: ClmModel,
    prompts: Sequence[list[int]],
    alphas: Sequence[float],
    modes: Sequence[str],
    *,
    max_tokens: int = 128,
    progress: bool = True,
) -> list[AlphaRow]:
    """One row per (mode, alpha): greedy answers to every (chat-templated) prompt, measured and
    guarded. The model runs n_sequences // 2 answers side by side."""
    if not prompts:
        raise ClmError("no prompts to evaluate")
    systems = [System(mode, ClmSource(model, mode), alphas) for mode in modes]
    cells, _ = evaluate_systems(systems, prompts, model, max_tokens=max_tokens, progress=progress)
    return [AlphaRow(c.alpha, c.system, c.words.mean, c.base_ppl.mean, c.n) for c in cells]


def rows_as_json(rows: Sequence[AlphaRow]) -> list[dict]:
    return [asdict(row) for row in rows]


def format_table(rows: Sequence[AlphaRow]) -> str:
    """A Markdown table: one line per alpha, a column pair per mode."""
    modes = list(dict.fromkeys(row.mode for row in rows))
    alphas = list(dict.fromkeys(row.alpha for row in rows))
    by_key = {(row.mode, row.alpha): row for row in rows}
    header = "| alpha | " + " | ".join(f"{m}: words | {m}: base ppl" for m in modes) + " |"
    lines = [header, "|---:|" + "---:|---:|" * len(modes)]
    for alpha in alphas:
        cells = []
        for mode in modes:
            row = by_key[(mode, alpha)]
            cells += [f"{row.metric:.1f}", f"{row.guard:.2f}"]
        lines.append(f"| {alpha:g} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(rows: Sequence[AlphaRow], path: Path) -> None:
    """Words and base perplexity against alpha, one line per mode."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ClmError("--plot needs matplotlib: pip install 'clm-local[train]'") from None
    figure, (words_axis, guard_axis) = plt.subplots(1, 2, figsize=(10, 4))
    for mode in dict.fromkeys(row.mode for row in rows):
        mine = [row for row in rows if row.mode == mode]
        words_axis.plot([r.alpha for r in mine], [r.metric for r in mine], marker="o", label=mode)
        guard_axis.plot([r.alpha for r in mine], [r.guard for r in mine], marker="o", label=mode)
    words_axis.set(xlabel="alpha", ylabel="mean answer length (words)", title="preference: concise answers")
    guard_axis.set(xlabel="alpha", ylabel="base-model perplexity of the answer", title="quality guard")
    guard_axis.set_yscale("log")  # it grows by orders of magnitude once the text breaks
    for axis in (words_axis, guard_axis):
        axis.axvline(0, color="grey", lw=0.5)
        axis.axvline(1, color="grey", lw=0.5, ls="--")
        axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
