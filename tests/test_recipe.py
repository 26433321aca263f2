"""The default model's recipe and evidence: prompts, preference rule, data builder, eval-alpha, shipped P."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

import clm_local
from clm_local import default_model
from clm_local.recipe.data_builder import build_preference_data
from clm_local.recipe.preference import Sample, rank, repetition_rate, word_count
from clm_local.recipe.prompts import all_prompts, split_prompts

CLI = [sys.executable, "-m", "clm_local.cli.main"]


def test_prompts_are_many_varied_and_unique() -> None:
    prompts = all_prompts()
    assert len(prompts) >= 300
    assert len(set(prompts)) == len(prompts)


def test_the_split_is_seeded_and_disjoint() -> None:
    split = split_prompts(0)
    assert split == split_prompts(0)
    assert split != split_prompts(1)
    assert not set(split.train) & set(split.held_out)
    assert set(split.train) | set(split.held_out) == set(all_prompts())
    limited = split_prompts(0, limit=20)
    assert limited.held_out == split.held_out[: len(limited.held_out)]
    assert not set(limited.train) & set(split.held_out)


def test_rank_prefers_the_shortest_finished_answer() -> None:
    short = Sample("Boil it for seven minutes, then cool it.", finished=True)
    long = Sample("Well, there are many ways to boil an egg, " * 5, finished=True)
    cut = Sample("An egg " * 40, finished=False)
    assert rank([long, short, cut]) == (short.text, cut.text)
    assert rank([long, short]) == (short.text, long.text)
    assert rank([cut, cut]) is None  # nothing finished: no clear winner
    assert rank([short, short]) is None  # no clear loser


def test_measures() -> None:
    assert word_count("Hello, world! Three words, 4 more.") == 6
    assert repetition_rate("one two three four five") == 0.0
    assert repetition_rate("la la la la la la la la") > 0.8


@pytest.fixture(scope="module")
def base_path() -> Path:
    return default_model.base_model_path()


def test_the_data_builder_is_deterministic_for_a_seed(base_path: Path, tmp_path: Path) -> None:
    prompts = split_prompts(0).train[:2]
    outputs = []
    with clm_local.load(base_path, n_ctx=256, n_threads=2, n_sequences=3) as model:
        for run in range(2):
            out = tmp_path / f"pairs{run}.jsonl"
            stats = build_preference_data(model, prompts, out, samples_per_prompt=3, seed=5, max_tokens=24)
            assert stats.prompts == 2 and stats.pairs + stats.skipped == 2 and stats.generated_tokens > 0
            outputs.append(out.read_text())
    assert outputs[0] == outputs[1]
    for line in outputs[0].splitlines():
        pair = json.loads(line)
        assert set(pair) == {"prompt", "chosen", "rejected"}
        assert word_count(pair["chosen"]) < word_count(pair["rejected"])


def test_eval_alpha_returns_well_formed_rows(tmp_path: Path) -> None:
    plot = tmp_path / "alpha.png"
    command = [*CLI, "eval-alpha", "--alphas", "0,1.5", "--n-prompts", "2", "--max-tokens", "12"]
    result = subprocess.run([*command, "--json", "--plot", str(plot)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)
    assert [(row["alpha"], row["system"]) for row in rows] == [
        (0.0, "logits"),
        (1.5, "logits"),
        (0.0, "embed"),
        (1.5, "embed"),
    ]
    for row in rows:
        assert set(row) == {"system", "alpha", "n", "seeds", "words", "base_ppl", "ended", "loops"}
        assert row["n"] == 2 and row["seeds"] == 1 and row["words"]["mean"] > 0
        assert math.isfinite(row["base_ppl"]["mean"]) and row["base_ppl"]["low"] >= 1
    assert plot.stat().st_size > 1000


def test_eval_alpha_refuses_bad_alphas() -> None:
    result = subprocess.run([*CLI, "eval-alpha", "--alphas", "0,x"], capture_output=True, text=True)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == ["error: --alphas takes comma-separated numbers, got '0,x'"]


@pytest.mark.skipif(not default_model.has_trained_pre_layer(), reason="no trained pre-layer shipped yet")
def test_the_shipped_pre_layer_grafts_onto_the_base_and_is_not_identity() -> None:
    weights = load_file(default_model.SHIPPED_PRE_LAYER / "pre_layer.safetensors")
    assert np.abs(weights["model.layers.0.self_attn.o_proj.weight"]).max() > 0
    assert np.abs(weights["model.layers.0.mlp.down_proj.weight"]).max() > 0
    path = default_model.default_model_path()
    tokens = list(range(100, 120))
    with clm_local.load(path, n_ctx=64, n_threads=2) as model:
        assert model.info.is_clm and model.info.n_blocks == 31
        aligned, reference = model.logits(tokens, alpha=1.0), model.logits(tokens, alpha=0.0)
    with clm_local.load(default_model.base_model_path(), n_ctx=64, n_threads=2) as base:
        with pytest.warns(UserWarning, match="alpha has no effect"):  # the base is a plain model
            base_logits = base.logits(tokens)
    np.testing.assert_allclose(reference, base_logits, rtol=0, atol=1e-3)
    assert np.abs(aligned - reference).max() > 1e-2
