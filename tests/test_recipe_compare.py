"""The evidence machinery of the recipe: batched greedy answers, measures, cells, the tune rule,
the full-DPO baseline's GGUF, and the `recipe default` -> `compare` / `tune` path at CI size."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import clm_local
from clm_local import default_model
from clm_local.chat.generation import Decoder
from clm_local.chat.sampling import SamplingParams
from clm_local.recipe.answers import (
    Answer,
    ClmSource,
    Job,
    Measures,
    MixSource,
    PlainSource,
    base_perplexities,
    greedy_answers,
    templated_prompts,
)
from clm_local.recipe.cells import Cell, Interval, bootstrap, summarise
from clm_local.recipe.preference import repeats_ngram
from clm_local.recipe.prompts import split_prompts
from clm_local.recipe.tune import choose, judge

CLI = [sys.executable, "-m", "clm_local.cli.main"]
GREEDY = SamplingParams(temp=0.0)


@pytest.fixture(scope="module")
def prompts() -> list[list[int]]:
    return templated_prompts(default_model.base_model_path(), split_prompts(0).held_out[:3], threads=2)


@pytest.mark.parametrize("mode", ["logits", "embed"])
def test_batched_answers_are_the_one_at_a_time_answers(prompts: list[list[int]], mode: str) -> None:
    """Three slots, six jobs at two alphas: each answer equals the chat code path's greedy answer."""
    jobs = [Job(prompt, alpha) for alpha in (1.0, 2.0) for prompt in prompts]
    with clm_local.load(default_model.default_model_path(), n_ctx=160, n_threads=2, n_sequences=6) as model:
        answers = greedy_answers(ClmSource(model, mode), jobs, model, max_tokens=24)
        for job, answer in zip(jobs, answers, strict=True):
            decoder = Decoder(model)
            expected = list(decoder.generate(job.prompt, job.alpha, mode, GREEDY, 24))
            assert answer.tokens == expected
            assert answer.ended == (not decoder.hit_max_tokens)


def test_the_two_model_mix_of_a_model_with_itself_is_that_model(prompts: list[list[int]]) -> None:
    jobs = [Job(prompt, 2.0) for prompt in prompts]
    path = default_model.base_model_path()
    with (
        clm_local.load(path, n_ctx=160, n_threads=2, n_sequences=2) as one,
        clm_local.load(path, n_ctx=160, n_threads=2, n_sequences=2) as other,
    ):
        mixed = greedy_answers(MixSource(one, other), jobs, one, max_tokens=16)
        plain = greedy_answers(PlainSource(one), jobs, one, max_tokens=16)
    assert mixed == plain


def test_a_clm_file_scores_perplexity_as_its_base(prompts: list[list[int]]) -> None:
    """The guard is the base model's: a CLM file switches its pre-layer off to score."""
    jobs = [Job(prompt, 1.0) for prompt in prompts[:2]]
    answers = [Answer(list(range(300, 310)), ended=True), Answer([], ended=False)]
    with clm_local.load(default_model.base_model_path(), n_ctx=160, n_threads=2, n_sequences=2) as base:
        expected = base_perplexities(base, jobs, answers)
    with clm_local.load(default_model.default_model_path(), n_ctx=160, n_threads=2, n_sequences=2) as clm:
        clm.set_alpha(0, 1.0)
        got = base_perplexities(clm, jobs, answers)
    assert expected[0] > 1 and math.isnan(expected[1]) and math.isnan(got[1])
    assert got[0] == pytest.approx(expected[0], rel=1e-3)


def test_repeats_ngram_finds_loops_only() -> None:
    assert repeats_ngram("to be or not to be or not to be or not")
    assert not repeats_ngram("to be or not to be, that is the question, to be sure")
    assert not repeats_ngram("")


def test_bootstrap_intervals() -> None:
    constant = bootstrap([2.0, 2.0, math.nan, 2.0])
    assert (constant.mean, constant.low, constant.high) == (2.0, 2.0, 2.0)
    spread = bootstrap(list(range(50)))
    assert spread.low < spread.mean == 24.5 < spread.high
    assert bootstrap([]).mean != bootstrap([]).mean  # NaN: nothing measured


def _cells(system: str, words: list[float], ppl: float, loops: float) -> list[Cell]:
    cells = []
    for alpha, count in zip((1.0, 1.5, 2.0), words, strict=True):
        measures = [Measures(int(count), ppl, True, i < loops * 10) for i in range(10)]
        cells.append(summarise(system, alpha, measures))
    return cells


def test_the_tune_rule() -> None:
    base = summarise("base", 0.0, [Measures(90, 2.0, True, i < 1) for i in range(10)])
    cells = [
        *_cells("strong/logits", [20, 15, 8], ppl=9.0, loops=0.0),  # shortest, but the text breaks
        *_cells("strong/embed", [20, 25, 18], ppl=2.5, loops=0.0),  # not monotonic
        *_cells("good/logits", [40, 30, 22], ppl=2.9, loops=0.2),  # loops 0.2 <= 1.5 * 0.1 + 1/10
        *_cells("good/embed", [40, 30, 20], ppl=3.1, loops=0.0),  # ppl 3.1 > 1.5 * 2.0
        *_cells("weak/logits", [60, 50, 40], ppl=2.2, loops=0.0),
        *_cells("weak/embed", [60, 50, 45], ppl=2.2, loops=0.3),  # loops 0.3 > 0.25
    ]
    verdicts = [judge(name, cells, base) for name in ("strong", "good", "weak")]
    assert [v.passing_modes for v in verdicts] == [[], ["logits"], ["logits"]]
    assert [v.words_at_2 for v in verdicts] == [None, 22, 40]
    assert choose(verdicts) == "good"
    assert choose(verdicts[:1]) is None


def test_the_full_dpo_gguf_runs_as_the_trained_model(tmp_path: Path) -> None:
    """The baseline's writer: names, q/k order and metadata right, so llama.cpp computes what torch does."""
    from clm_local.recipe.full_dpo import write_trained_gguf
    from clm_local.training.base_model import load_model, resolve_base

    base = default_model.base_model_path()
    model = load_model(resolve_base(base), torch.float32, torch.device("cpu"))
    tokens = [1, 9690, 198, 2683, 359, 253, 5356, 5646, 11173, 3365]
    with torch.no_grad():
        untrained = model(torch.tensor([tokens])).logits[0].numpy()
        # a visible change in one block, so that a tensor copied from the base would show
        model.model.layers[3].self_attn.q_proj.weight.mul_(1.5)
        model.model.layers[3].self_attn.k_proj.weight.mul_(0.5)
        model.model.layers[3].mlp.down_proj.weight.mul_(2.0)
        expected = model(torch.tensor([tokens])).logits[0].numpy()
    out = tmp_path / "full.gguf"
    write_trained_gguf(model, base, out)
    with clm_local.load(out, n_ctx=32, n_threads=2) as loaded:
        with pytest.warns(UserWarning, match="alpha has no effect"):
            got = loaded.logits(tokens)
    assert np.abs(expected - untrained).max() > 1.0
    # llama.cpp keeps the KV cache in F16: a few logits differ by up to ~0.04 from torch's F32
    np.testing.assert_allclose(got, expected, atol=0.1, rtol=0)


@pytest.fixture(scope="module")
def recipe_work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CI-sized `recipe default` run: 12 train prompts, 2 of them dev, 2 held out."""
    work = tmp_path_factory.mktemp("recipe") / "work"
    command = [*CLI, "recipe", "default", "--work", str(work), "--train-prompts", "12", "--dev-prompts", "2"]
    result = subprocess.run(command, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    return work


def test_compare_quick_writes_every_cell_and_cost(recipe_work: Path) -> None:
    result = subprocess.run(
        [*CLI, "recipe", "compare", str(recipe_work), "--quick"], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "| full-dpo mix | 2 |" in result.stdout
    report = json.loads((recipe_work / "compare" / "compare.json").read_text())
    systems = [(cell["system"], cell["alpha"]) for cell in report["cells"]]
    assert systems == [("base", 0.0)] + [
        (system, alpha) for system in ("clm/logits", "clm/embed", "full-dpo mix") for alpha in (1.0, 2.0)
    ]
    for cell in report["cells"]:
        assert cell["n"] == 2  # the quick run's 3 prompts, capped by the split's 2 held-out ones
        words = Interval(**cell["words"])
        assert words.low <= words.mean <= words.high and words.mean > 0
    costs = report["costs"]
    assert costs["clm"]["parameters"] * 20 < costs["full-dpo"]["parameters"]  # P: a few % of the model
    assert costs["clm"]["steps"] == costs["full-dpo"]["steps"] > 0
    assert all(cost["peak_rss_bytes"] > 2**20 and cost["seconds"] > 0 for cost in costs.values())
    assert (recipe_work / "compare" / "compare.png").stat().st_size > 1000
    assert len((recipe_work / "compare" / "answers.jsonl").read_text().splitlines()) == 2 * 7


def test_tune_trains_a_candidate_and_applies_the_rule(recipe_work: Path) -> None:
    candidate = "lr 5e-6, 1 epoch"
    command = [*CLI, "recipe", "tune", str(recipe_work), "--candidate", candidate, "--max-tokens", "12"]
    result = subprocess.run(command, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((recipe_work / "tune" / "tune.json").read_text())
    systems = [cell["system"] for cell in report["cells"]]
    assert systems == ["base"] + [f"{candidate}/logits"] * 3 + [f"{candidate}/embed"] * 3
    assert report["dev_prompts"] == 2
    assert report["choice"] in (None, candidate)
    assert "choice:" in result.stdout


def test_compare_refuses_a_folder_without_a_recipe_run(tmp_path: Path) -> None:
    result = subprocess.run([*CLI, "recipe", "compare", str(tmp_path)], capture_output=True, text=True)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"error: {tmp_path} holds no recipe_log.jsonl: run `clm-local recipe default --work {tmp_path}` first"
    ]
