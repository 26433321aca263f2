"""Greedy answers to many (prompt, alpha) jobs, several per llama.cpp batch, and what is measured on them.

The evaluations of the recipe (`eval-alpha`, `recipe tune`, `recipe compare`) answer every held-out
prompt at every alpha of every system. Decoded one after another that is hours on a laptop; here a
fixed number of slots run side by side, and a slot whose answer ended takes the next job in the
same step (continuous batching, as llama-server's slots do). Each slot has its own alpha.

A `LogitSource` is what the answers come from:
- `ClmSource`, a CLM GGUF in one mode: logits mode holds two sequences per slot (coefficients 1
  and 0) and mixes their logits with the slot's alpha; embed mode one sequence at the slot's alpha;
- `MixSource`, two plain GGUFs side by side, z = alpha * z_aligned + (1 - alpha) * z_base: the
  two-model mix a user can do without CLM (DeRa-style);
- `PlainSource`, one plain GGUF (the base model; alpha has no meaning there).

Each answer is then measured: words (the default preference's metric), the base model's
perplexity of it (quality guard 1), whether it ended with the end-of-turn token before the token
limit, and whether it loops (quality guard 2, independent of the base model).
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from clm_local.chat.template import ChatTemplate
from clm_local.recipe.preference import repeats_ngram, word_count
from clm_local.runtime.model import ClmModel, mix_logits


@dataclass(frozen=True)
class Job:
    prompt: list[int]  # the chat-templated prompt tokens
    alpha: float


@dataclass(frozen=True)
class Answer:
    tokens: list[int]
    ended: bool  # the model ended its turn (or the text) before the token limit


@dataclass(frozen=True)
class Measures:
    """One answer, measured."""

    words: int
    base_ppl: float  # NaN for an empty answer (nothing to score)
    ended: bool
    loops: bool  # some word 4-gram occurs three times or more


class LogitSource(Protocol):
    slots: int  # how many jobs run side by side

    def begin(self, slot: int, alpha: float) -> None:
        """Empty the slot's sequences for a new job answered at `alpha`."""

    def decode(self, tokens: dict[int, list[int]]) -> dict[int, np.ndarray]:
        """Append tokens to slots (one batch) and return each slot's next-token logits."""


class ClmSource:
    """A CLM GGUF in logits or embed mode; the model needs 2 sequences per slot in logits mode."""

    def __init__(self, model: ClmModel, mode: str) -> None:
        self.model, self.mode = model, mode
        self.per_slot = 2 if mode == "logits" else 1
        self.slots = model.n_sequences // self.per_slot
        self.alphas: dict[int, float] = {}

    def _sequences(self, slot: int) -> range:
        return range(slot * self.per_slot, (slot + 1) * self.per_slot)

    def begin(self, slot: int, alpha: float) -> None:
        aligned, *reference = self._sequences(slot)
        for seq in self._sequences(slot):
            self.model.forget_after(seq, 0)
        self.model.set_alpha(aligned, 1.0 if reference else alpha)
        for seq in reference:
            self.model.set_alpha(seq, 0.0)
        self.alphas[slot] = alpha

    def decode(self, tokens: dict[int, list[int]]) -> dict[int, np.ndarray]:
        by_seq = {seq: piece for slot, piece in tokens.items() for seq in self._sequences(slot)}
        if self.per_slot == 1:
            rows = self.model.decode(by_seq, check=False)
            return {slot: rows[slot][-1] for slot in tokens}
        mix = {2 * slot: (2 * slot + 1, self.alphas[slot]) for slot in tokens}
        rows = self.model.decode(by_seq, check=False, mix=mix)
        return {slot: rows[2 * slot][-1] for slot in tokens}


class MixSource:
    """Two plain models with the same vocabulary, one sequence per slot in each."""

    def __init__(self, aligned: ClmModel, base: ClmModel) -> None:
        self.aligned, self.base = aligned, base
        self.slots = min(aligned.n_sequences, base.n_sequences)
        self.alphas: dict[int, float] = {}

    def begin(self, slot: int, alpha: float) -> None:
        self.aligned.forget_after(slot, 0)
        self.base.forget_after(slot, 0)
        self.alphas[slot] = alpha

    def decode(self, tokens: dict[int, list[int]]) -> dict[int, np.ndarray]:
        aligned = self.aligned.decode(tokens, check=False)
        base = self.base.decode(tokens, check=False)
        return {slot: mix_logits(aligned[slot][-1], base[slot][-1], self.alphas[slot]) for slot in tokens}


class PlainSource:
    """One plain model, one sequence per slot."""

    def __init__(self, model: ClmModel) -> None:
        self.model = model
        self.slots = model.n_sequences

    def begin(self, slot: int, alpha: float) -> None:
        self.model.forget_after(slot, 0)

    def decode(self, tokens: dict[int, list[int]]) -> dict[int, np.ndarray]:
        return {slot: rows[-1] for slot, rows in self.model.decode(tokens, check=False).items()}


def greedy_answers(
    source: LogitSource, jobs: Sequence[Job], model: ClmModel, *, max_tokens: int
) -> list[Answer]:
    """Every job's greedy answer, `source.slots` at a time; `model` knows the end-of-turn tokens.

    Non-finite logits (an extreme alpha can overflow) end that answer where it is, unfinished.
    """
    pending = deque(enumerate(jobs))
    running: dict[int, tuple[int, list[int]]] = {}  # slot -> (job index, answer so far)
    answers: list[Answer | None] = [None] * len(jobs)
    feed: dict[int, list[int]] = {}
    while pending or running:
        for slot in range(source.slots):
            if slot not in running and pending:
                index, job = pending.popleft()
                source.begin(slot, job.alpha)
                running[slot] = (index, [])
                feed[slot] = list(job.prompt)
        logits = source.decode(feed)
        feed = {}
        for slot, row in logits.items():
            index, answer = running[slot]
            token = int(np.argmax(row))
            ended = np.isfinite(row).all() and model.is_end_of_generation(token)
            if ended or not np.isfinite(row).all() or len(answer) >= max_tokens:
                answers[index] = Answer(answer, ended=bool(ended))
                del running[slot]
                continue
            answer.append(token)
            feed[slot] = [token]
    return [answer for answer in answers if answer is not None]


def base_perplexities(base: ClmModel, jobs: Sequence[Job], answers: Sequence[Answer]) -> list[float]:
    """exp(mean negative log-likelihood) of each answer under the base model, `n_sequences` at a time.

    `base` is the base GGUF, or a CLM file: its pre-layer is then switched off (coefficient 0).
    """
    result = [math.nan] * len(jobs)
    scored = [i for i, answer in enumerate(answers) if answer.tokens]
    for start in range(0, len(scored), base.n_sequences):
        group = scored[start : start + base.n_sequences]
        base.reset()
        if base.info.is_clm:
            for slot in range(len(group)):
                base.set_alpha(slot, 0.0)
        rows = base.decode(
            {slot: jobs[i].prompt + answers[i].tokens for slot, i in enumerate(group)},
            all_logits=True,
            check=False,
        )
        for slot, i in enumerate(group):
            prompt, answer = jobs[i].prompt, answers[i].tokens
            logits = rows[slot][len(prompt) - 1 : -1].astype(np.float64)
            logits -= logits.max(axis=1, keepdims=True)
            log_probs = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
            result[i] = math.exp(-float(np.mean(log_probs[np.arange(len(answer)), answer])))
    return result


def templated_prompts(path: Path, prompts: Sequence[str], threads: int | None = None) -> list[list[int]]:
    """Each prompt as a user turn in the model's own chat template, as token ids (a brief load)."""
    with ClmModel(path, n_ctx=1024, n_sequences=1, n_threads=threads) as model:
        template = ChatTemplate.for_model(model)
        return [template.tokens([{"role": "user", "content": prompt}]) for prompt in prompts]


def context_for(prompts: Sequence[list[int]], max_tokens: int) -> int:
    """The per-sequence context that the longest prompt and its longest answer need."""
    return max(len(prompt) for prompt in prompts) + max_tokens + 1


def answer_text(model: ClmModel, tokens: Sequence[int]) -> str:
    return b"".join(model.token_to_piece(t) for t in tokens).decode("utf-8", errors="replace")


def measure(
    base: ClmModel, jobs: Sequence[Job], answers: Sequence[Answer]
) -> tuple[list[Measures], list[str]]:
    """The measures of every answer (perplexity under `base`), and the answers' texts."""
    texts = [answer_text(base, answer.tokens) for answer in answers]
    perplexities = base_perplexities(base, jobs, answers)
    measures = [
        Measures(word_count(text), ppl, answer.ended, repeats_ngram(text, n=4, times=3))
        for text, ppl, answer in zip(texts, perplexities, answers, strict=True)
    ]
    return measures, texts


def decode_speed(source: LogitSource, prompt: list[int], alpha: float, tokens: int) -> float:
    """Tokens per second of one answer decoded alone (slot 0) after `prompt`, greedy, `tokens` long
    whatever the model would end with (the prompt's prefill not counted): what a single chat sees."""
    source.begin(0, alpha)
    row = source.decode({0: list(prompt)})[0]
    started, done = time.perf_counter(), 0
    while done < tokens and np.isfinite(row).all():
        row = source.decode({0: [int(np.argmax(row))]})[0]
        done += 1
    return done / (time.perf_counter() - started) if done else math.nan
