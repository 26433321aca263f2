"""The default preference: concise answers over long-winded ones, measured by a program.

A user may well want to dial this one (short and to the point, or chatty and detailed), and a
program can score it without a judge model: the number of words. The quality guard watches for
what extrapolation can break: text that repeats itself.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

MIN_WORDS = 4  # shorter answers are not "concise", they are broken: never chosen
MIN_RATIO = 1.5  # the rejected answer must be at least this much longer than the chosen one


@dataclass(frozen=True)
class Sample:
    """One sampled answer; `finished` is False when generation hit the token limit."""

    text: str
    finished: bool


def word_count(text: str) -> int:
    return len(re.findall(r"\w+", text))


def repetition_rate(text: str, n: int = 3) -> float:
    """The share of word n-grams that repeat an earlier one: 0 for fresh text, near 1 for loops."""
    words = re.findall(r"\w+", text.lower())
    grams = [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]
    if not grams:
        return 0.0
    return 1.0 - len(set(grams)) / len(grams)


def repeats_ngram(text: str, *, n: int = 4, times: int = 3) -> bool:
    """Whether some word n-gram occurs `times` times or more: the mark of a looping answer."""
    words = re.findall(r"\w+", text.lower())
    counts: dict[tuple[str, ...], int] = {}
    for i in range(len(words) - n + 1):
        gram = tuple(words[i : i + n])
        counts[gram] = counts.get(gram, 0) + 1
        if counts[gram] >= times:
            return True
    return False


def rank(samples: list[Sample]) -> tuple[str, str] | None:
    """(chosen, rejected): the shortest finished answer against the longest answer.

    None when the samples do not make a clear pair: no finished answer of a sensible length, or
    the longest is not clearly longer (MIN_RATIO). An unfinished answer counts as the longest.
    """
    candidates = [s for s in samples if s.finished and word_count(s.text) >= MIN_WORDS]
    if not candidates:
        return None
    chosen = min(candidates, key=lambda s: word_count(s.text))
    rejected = max(samples, key=lambda s: (not s.finished, word_count(s.text)))
    if word_count(rejected.text) < MIN_RATIO * word_count(chosen.text):
        return None
    return chosen.text, rejected.text
