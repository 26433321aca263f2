"""Build the default preference data: sample answers from the base model, rank them, write JSONL.

For every prompt, several answers are sampled from the base SmolLM2 in one llama.cpp batch (one
sequence per answer, each with its own seeded sampler), ranked by the measurable rule of
`preference.py`, and the best and worst kept as `chosen` / `rejected`. Prompts that give no clear
pair are skipped and counted. The same seed gives the same file.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from clm_local.chat.sampling import Sampler, SamplingParams
from clm_local.chat.template import ChatTemplate
from clm_local.files import write_text
from clm_local.recipe.answers import answer_text
from clm_local.recipe.preference import Sample, rank
from clm_local.runtime.model import ClmModel


@dataclass(frozen=True)
class BuildStats:
    prompts: int
    pairs: int
    skipped: int
    generated_tokens: int


def sample_answers(
    model: ClmModel, prompt_tokens: list[int], n: int, seed: int, max_tokens: int, temp: float
) -> tuple[list[Sample], int]:
    """n answers to one prompt, decoded side by side; returns them and the tokens generated."""
    model.reset()
    sequences = list(range(n))
    first = model.decode({seq: prompt_tokens for seq in sequences})
    logits = {seq: rows[-1] for seq, rows in first.items()}
    answers: dict[int, list[int]] = {seq: [] for seq in sequences}
    finished: set[int] = set()
    samplers = [Sampler(model.n_vocab, SamplingParams(temp=temp, seed=seed + seq)) for seq in sequences]
    try:
        active = list(sequences)
        for _ in range(max_tokens):
            step: dict[int, list[int]] = {}
            for seq in active:
                token = samplers[seq].sample(logits[seq])
                if model.is_end_of_generation(token):
                    finished.add(seq)
                else:
                    answers[seq].append(token)
                    step[seq] = [token]
            active = list(step)
            if not active or len(prompt_tokens) + len(answers[active[0]]) >= model.n_ctx:
                break
            logits = {seq: rows[-1] for seq, rows in model.decode(step).items()}
    finally:
        for sampler in samplers:
            sampler.close()
    samples = [Sample(answer_text(model, answers[seq]), seq in finished) for seq in sequences]
    return samples, sum(len(tokens) for tokens in answers.values())


def build_preference_data(
    model: ClmModel,
    prompts: Sequence[str],
    out: Path,
    *,
    samples_per_prompt: int,
    seed: int,
    max_tokens: int,
    temp: float = 0.9,
) -> BuildStats:
    """Write `out` (JSONL: prompt, chosen, rejected) from answers sampled for `prompts`."""
    template = ChatTemplate.for_model(model)
    pairs, generated = [], 0
    for index, prompt in enumerate(prompts):
        tokens = template.tokens([{"role": "user", "content": prompt}])
        samples, count = sample_answers(
            model, tokens, samples_per_prompt, seed + 1000 * index, max_tokens, temp
        )
        generated += count
        ranked = rank(samples)
        if ranked is not None:
            pairs.append({"prompt": prompt, "chosen": ranked[0], "rejected": ranked[1]})
        print(f"\r  sampled {index + 1}/{len(prompts)} prompts, {len(pairs)} pairs", end="", file=sys.stderr)
    print(file=sys.stderr)
    write_text(out, "".join(json.dumps(pair, ensure_ascii=False) + "\n" for pair in pairs))
    return BuildStats(len(prompts), len(pairs), len(prompts) - len(pairs), generated)
