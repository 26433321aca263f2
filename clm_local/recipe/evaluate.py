"""`clm-local eval-alpha`: how the preference moves with alpha, on held-out prompts.

For each mode and alpha, every held-out prompt is answered greedily through the chat code path,
then two numbers are averaged over the prompts:
- metric: the measured property of the default preference, the answer's length in words
  (lower = more concise = more aligned);
- guard: the base model's perplexity of the answer (the file at alpha 0 is the base model), which
  rises when extrapolation breaks the text (loops, gibberish).
"""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from clm_local.chat.generation import Decoder
from clm_local.chat.sampling import SamplingParams
from clm_local.chat.template import ChatTemplate
from clm_local.errors import ClmError
from clm_local.recipe.preference import word_count
from clm_local.runtime.model import ClmModel

GREEDY = SamplingParams(temp=0.0)


@dataclass(frozen=True)
class AlphaRow:
    alpha: float
    mode: str
    metric: float  # mean answer length in words
    guard: float  # mean perplexity of the answers under the base model
    n: int  # prompts answered


def answer_text(model: ClmModel, tokens: Sequence[int]) -> str:
    return b"".join(model.token_to_piece(t) for t in tokens).decode("utf-8", errors="replace")


def base_perplexity(model: ClmModel, prompt: Sequence[int], answer: Sequence[int]) -> float:
    """exp(mean negative log-likelihood) of the answer tokens under the base model (alpha 0)."""
    logits = model.logits([*prompt, *answer], alpha=0.0, mode="embed")[len(prompt) - 1 : -1]
    logits = logits - logits.max(axis=1, keepdims=True)
    log_probs = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    return math.exp(-float(np.mean(log_probs[np.arange(len(answer)), answer])))


def evaluate_alphas(
    model: ClmModel,
    prompts: Sequence[str],
    alphas: Sequence[float],
    modes: Sequence[str],
    *,
    max_tokens: int = 128,
    progress: bool = True,
) -> list[AlphaRow]:
    """One row per (mode, alpha): greedy answers to every prompt, measured and guarded."""
    if not prompts:
        raise ClmError("no prompts to evaluate")
    template = ChatTemplate.for_model(model)
    prompt_tokens = [template.tokens([{"role": "user", "content": prompt}]) for prompt in prompts]
    rows = []
    for mode in modes:
        for alpha in alphas:
            decoder = Decoder(model)
            answers = [list(decoder.generate(p, alpha, mode, GREEDY, max_tokens)) for p in prompt_tokens]
            words = [word_count(answer_text(model, answer)) for answer in answers]
            scored = zip(prompt_tokens, answers, strict=True)
            perplexities = [base_perplexity(model, p, a) for p, a in scored if a]
            row = AlphaRow(
                alpha=alpha,
                mode=mode,
                metric=float(np.mean(words)),
                guard=float(np.mean(perplexities)) if perplexities else math.nan,
                n=len(prompts),
            )
            if progress:
                print(
                    f"  {mode:6s} alpha={alpha:5.2f}  words={row.metric:6.1f}  base ppl={row.guard:7.2f}",
                    file=sys.stderr,
                )
            rows.append(row)
    return rows


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
