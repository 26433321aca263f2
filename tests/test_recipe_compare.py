"""The evidence machinery of the recipe: batched greedy answers, measures, cells (seed-pooled
intervals included), the tune and sweep rules, the verdict, the full-DPO baseline's GGUF and ExPO's,
and the `recipe default` -> `compare` (resumable) / `tune` path at CI size."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch

import clm_local
from clm_local import default_model
from clm_local.chat.generation import Decoder
from clm_local.chat.sampling import SamplingParams
from clm_local.recipe import sweep, verdict
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
from clm_local.recipe.cells import (
    Cell,
    Interval,
    bootstrap,
    cells_from_records,
    difference,
    hierarchical_bootstrap,
    summarise,
)
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


def test_the_sweep_rule() -> None:
    """At alpha 1: the shortest answers among the rates whose guards hold; ties to the lower rate;
    none holding: the lowest rate, flagged."""
    base = summarise("base", 0.0, [Measures(90, 2.0, True, i < 1) for i in range(10)])

    def cell(system: str, lr: float, words: int, ppl: float, loops: float) -> Cell:
        measures = [Measures(words, ppl, True, i < loops * 10) for i in range(10)]
        return summarise(sweep.cell_name(system, lr), 1.0, measures)

    cells = [
        cell("clm", 1e-5, 10, 3.5, 0.0),  # the strongest, but perplexity 3.5 > 1.5 * 2.0
        cell("clm", 5e-6, 30, 2.9, 0.2),  # loops 0.2 <= 1.5 * 0.1 + 1/10: passes
        cell("clm", 2.5e-6, 60, 2.0, 0.0),
        cell("full-dpo", 2.5e-6, 20, 2.2, 0.3),  # loops 0.3 > 0.25
        cell("full-dpo", 1.25e-6, 40, 2.1, 0.0),
        cell("full-dpo", 6.25e-7, 40, 2.0, 0.0),  # ties with 1.25e-6: the lower rate wins
    ]
    clm = sweep.judge(cells, base, "clm", (2.5e-6, 5e-6, 1e-5))
    assert [v.passes for v in clm] == [True, True, False]
    assert sweep.choose(clm) == (5e-6, True)
    full = sweep.judge(cells, base, "full-dpo", (6.25e-7, 1.25e-6, 2.5e-6))
    assert sweep.choose(full) == (6.25e-7, True)
    assert sweep.choose(clm[2:]) == (1e-5, False)  # nothing passes: the lowest rate, flagged


def test_the_hierarchical_bootstrap_holds_the_seed_spread() -> None:
    prompts = list(np.random.default_rng(0).normal(50.0, 10.0, 40))
    one = hierarchical_bootstrap([prompts])
    plain = bootstrap(prompts)
    assert one.mean == pytest.approx(plain.mean) and one.per_seed == (pytest.approx(plain.mean),)
    assert one.high - one.low == pytest.approx(plain.high - plain.low, rel=0.15)  # one seed: prompts only
    widths = []
    for spread in (0.0, 5.0, 20.0):
        seeds = [[v + shift for v in prompts] for shift in (-spread, 0.0, spread)]
        interval = hierarchical_bootstrap(seeds)
        assert interval.mean == pytest.approx(np.mean(prompts))
        assert interval.per_seed == pytest.approx(
            [np.mean(prompts) - spread, np.mean(prompts), np.mean(prompts) + spread]
        )
        widths.append(interval.high - interval.low)
    assert widths[0] < widths[1] < widths[2]
    assert widths[2] > 2 * 20.0 * 0.8  # three seeds 20 apart: the interval spans most of them
    assert math.isnan(hierarchical_bootstrap([[math.nan], []]).mean)
    same, shifted = (
        difference([prompts] * 3, [prompts] * 3),
        difference([prompts] * 3, [[v + 30 for v in prompts]] * 3),
    )
    assert same.low < 0 < same.high and shifted.high < 0 and shifted.mean == pytest.approx(-30)


def _records(system: str, alpha: float, seed: int | None, words: list[int], ppl: float = 2.0) -> list[dict]:
    return [
        {"system": system, "alpha": alpha, "seed": seed, "prompt": i, "text": "", "words": w}
        | {"base_ppl": ppl, "ended": True, "loops": False}
        for i, w in enumerate(words)
    ]


def test_cells_pool_seeds_and_the_verdict_reads_them() -> None:
    rng = np.random.default_rng(1)

    def words(mean: float) -> list[int]:
        return [int(w) for w in rng.normal(mean, 5.0, 30)]

    records = _records("base", 0.0, None, words(90))
    for seed in (0, 1, 2):
        records += _records("clm/logits", 1.0, seed, words(65))
        records += _records("clm/logits", 2.0, seed, words(40), ppl=2.4)
        records += _records("full-dpo/dera", 1.0, seed, words(16), ppl=3.6)  # past the guard (3.0)
        records += _records("full-dpo/dera", 0.5, seed, words(41), ppl=2.3)
        records += _records("full-dpo/expo", 2.0, seed, words(60 + 20 * seed), ppl=2.1)  # seeds disagree
    cells = cells_from_records(records)
    assert [(c.system, c.alpha, c.seeds) for c in cells][:3] == [
        ("base", 0.0, 1),
        ("clm/logits", 1.0, 3),
        ("clm/logits", 2.0, 3),
    ]
    expo = next(c for c in cells if c.system == "full-dpo/expo")
    assert expo.words.per_seed[2] - expo.words.per_seed[0] == pytest.approx(40, abs=5)
    clm2 = next(c for c in cells if (c.system, c.alpha) == ("clm/logits", 2.0))
    assert expo.words.high - expo.words.low > 3 * (clm2.words.high - clm2.words.low)

    found = verdict.judge(cells, records)
    assert found["best"]["clm/logits"]["alpha"] == 2.0
    assert found["best"]["full-dpo/dera"]["alpha"] == 0.5  # its alpha 1 breaks the guard
    assert found["at_equal_quality"]["full"]["system"] == "full-dpo/dera"
    assert found["at_equal_quality"]["outcome"] == "comparable"  # 40 against 41 words
    assert found["at_alpha_1"]["outcome"] == "clm weaker"  # 65 against 16 words
    assert any(line.startswith("Is CLM comparable to full fine-tuning here? yes") for line in found["lines"])
    assert Cell.from_dict(json.loads(json.dumps(asdict(expo)))) == expo


def test_expo_writes_the_base_at_0_and_full_dpo_at_1_exactly(tmp_path: Path) -> None:
    """theta_base (the base GGUF dequantized) is what full DPO starts from, bit for bit, and the
    ExPO files at alpha 0 and 1 hold the base's and the DPO model's weights exactly (F32)."""
    from clm_local.converters.graft import read_heads
    from clm_local.converters.hf_tensors import reorder_for_llama_cpp
    from gguf.quants import dequantize

    from clm_local.gguf.file import open_gguf
    from clm_local.recipe.expo import expo_tensor, write_expo_gguf
    from clm_local.recipe.full_dpo import write_trained_gguf
    from clm_local.training.base_model import load_model, resolve_base

    base = default_model.base_model_path()
    model = load_model(resolve_base(base), torch.float32, torch.device("cpu"))
    base_reader = open_gguf(base)
    theta_base = {t.name: dequantize(t.data, t.tensor_type) for t in base_reader.tensors}
    with torch.no_grad():  # the untrained model, as write_trained_gguf lays it out, is theta_base
        layer = model.model.layers[2].self_attn.q_proj.weight
        heads = read_heads(base_reader, base, "llama")
        start = reorder_for_llama_cpp("llama", "blk.2.attn_q.weight", layer.numpy(), heads)
        np.testing.assert_array_equal(start, theta_base["blk.2.attn_q.weight"])
        np.testing.assert_array_equal(
            model.model.embed_tokens.weight.numpy(), theta_base["token_embd.weight"]
        )
        model.model.layers[2].self_attn.q_proj.weight.add_(0.01)
        model.model.layers[5].mlp.down_proj.weight.mul_(1.1)
        model.model.embed_tokens.weight.add_(-0.002)
    dpo = tmp_path / "full.gguf"
    write_trained_gguf(model, base, dpo)
    dpo_reader = open_gguf(dpo)
    for alpha in (0.0, 1.0):
        out = tmp_path / f"expo-{alpha:g}.gguf"
        write_expo_gguf(base, dpo, alpha, out)
        reader = open_gguf(out)
        assert [t.name for t in reader.tensors] == [t.name for t in dpo_reader.tensors]
        assert {f.name: f.contents() for f in reader.fields.values() if not f.name.startswith("GGUF.")} == {
            f.name: f.contents() for f in dpo_reader.fields.values() if not f.name.startswith("GGUF.")
        }
        for tensor, trained in zip(reader.tensors, dpo_reader.tensors, strict=True):
            expected = theta_base[tensor.name] if alpha == 0.0 else np.asarray(trained.data)
            np.testing.assert_array_equal(np.asarray(tensor.data), expected)
        out.unlink()
    by_name = {t.name: t for t in dpo_reader.tensors}
    for name in ("blk.2.attn_q.weight", "token_embd.weight"):  # alpha 2: twice the update
        origin = next(t for t in base_reader.tensors if t.name == name)
        got = expo_tensor(origin, by_name[name], 2.0)
        expected = 2 * np.asarray(by_name[name].data, np.float64) - theta_base[name]
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)
        assert np.abs(got - theta_base[name]).max() > 0.003


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


def _compare(work: Path, *options: str) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [*CLI, "recipe", "compare", str(work), "--quick", *options], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def _mtimes(folder: Path, pattern: str) -> dict[str, int]:
    return {str(path.relative_to(folder)): path.stat().st_mtime_ns for path in sorted(folder.glob(pattern))}


def test_compare_quick_sweeps_trains_seeds_and_resumes(recipe_work: Path) -> None:
    """The sweep chooses and stops (--sweep-only). A second run, after a training that stopped part
    way, retrains nothing finished and trains what is missing; a third, after a lost answer set,
    trains nothing, answers only that set again and reports the same cells."""
    folder = recipe_work / "compare-quick"
    first = _compare(recipe_work, "--sweep-only")
    sweep_report = json.loads((folder / "sweep.json").read_text())
    chosen = sweep_report["chosen"]
    assert f"chosen: {json.dumps(chosen)}" in first.stdout
    assert chosen["clm"] in (2.5e-6, 5e-6) and chosen["full-dpo"] == 2.5e-6
    assert [cell["system"] for cell in sweep_report["cells"]] == [
        "base",
        "clm lr 2.5e-06",
        "clm lr 5e-06",
        "full-dpo lr 2.5e-06",
    ]
    assert not list(folder.glob("answers-*"))  # no held-out prompt answered before the choice
    # the recipe's rate with the recipe's seed is the recipe's own P: reused, not trained
    reused = json.loads((folder / "runs" / "clm-lr2.5e-06-seed0" / "done.json").read_text())
    assert reused["model"] == "default-clm.gguf"
    swept = _mtimes(folder, "runs/*/done.json")
    assert len(swept) == 3 and first.stderr.count("[compare] training ") == 2

    stopped = folder / "runs" / f"clm-lr{chosen['clm']:g}-seed1"  # a training cut short: no done.json
    stopped.mkdir()
    (stopped / "model.gguf").write_bytes(b"half a file")
    second = _compare(recipe_work)
    assert second.stderr.count("[compare] training ") == 2  # seed 1 of each system, nothing else
    assert {k: v for k, v in _mtimes(folder, "runs/*/done.json").items() if k in swept} == swept
    assert (stopped / "model.gguf").stat().st_size > 10**6
    report = json.loads((folder / "compare.json").read_text())
    assert report["seeds"] == [0, 1] and report["sweep"]["chosen"] == chosen
    systems = [(cell["system"], cell["alpha"]) for cell in report["cells"]]
    assert systems == [("base", 0.0)] + [
        (system, alpha)
        for system in ("clm/logits", "clm/embed", "full-dpo/dera", "full-dpo/expo")
        for alpha in (1.0, 2.0)
    ]
    for cell in report["cells"]:
        assert cell["n"] == 2  # the quick run's 3 prompts, capped by the split's 2 held-out ones
        words = Interval.from_dict(cell["words"])
        assert words.low <= words.mean <= words.high and words.mean > 0
        assert len(words.per_seed) == (1 if cell["system"] == "base" else 2) == cell["seeds"]
        assert words.mean == pytest.approx(sum(words.per_seed) / len(words.per_seed))
    train = report["costs"]["train"]
    assert train["clm"]["parameters"] * 20 < train["full-dpo"]["parameters"]  # P: a few % of the model
    assert train["clm"]["steps"] == train["full-dpo"]["steps"] > 0
    assert train["clm"]["lr"] == chosen["clm"] and set(train["full-dpo"]["per_seed"]) == {"0", "1"}
    serve = report["costs"]["serve"]
    assert serve["full-dpo/expo"]["weights_bytes"] > 4 * serve["base"]["weights_bytes"]  # F32
    assert set(serve["full-dpo/expo"]["decode_tok_s"]) == {"1.0", "2.0"}
    assert any("comparable to full fine-tuning" in line for line in report["verdict"]["lines"])
    assert "| full-dpo/expo | 2 |" in second.stdout and "words by seed" in second.stdout
    assert (folder / "compare.png").stat().st_size > 1000
    assert not list(folder.glob("**/expo.gguf"))  # each ExPO file is removed once it answered

    answers = next(folder.glob("answers-*"))
    sets = _mtimes(answers, "*.jsonl")
    assert len(sets) == 1 + 2 * (3 + 2)  # base, then per seed: CLM in both modes, DeRa, ExPO per alpha
    (answers / "dera-seed1.jsonl").unlink()  # stopped while answering this set
    (folder / "compare.json").unlink()
    third = _compare(recipe_work, "--publish", str(recipe_work / "published"))
    assert "[compare] training " not in third.stderr
    again = _mtimes(answers, "*.jsonl")
    assert {name for name in sets if again[name] != sets[name]} == {"dera-seed1.jsonl"}
    assert json.loads((folder / "compare.json").read_text())["cells"] == report["cells"]
    published = recipe_work / "published"
    assert (published / "fair-compare.json").read_text() == (folder / "compare.json").read_text()
    assert (published / "fair-compare-sweep.json").is_file() and (published / "fair-compare.png").is_file()


def test_an_answer_set_is_answered_once_per_model_file(tmp_path: Path) -> None:
    """A finished set is read back, not answered again; a new file of its model (a training that
    ran again) makes it stale; another prompt list in the same folder is refused."""
    import os
    import shutil

    from clm_local.errors import ClmError
    from clm_local.recipe.answer_sets import AnswerStore

    model = tmp_path / "model.gguf"
    shutil.copyfile(default_model.base_model_path(), model)
    prompts = split_prompts(0).held_out[:1]

    def answer(store: AnswerStore) -> list[dict]:
        return store.answer_set("plain", 3, "plain", [0.0, 1.0], store.plain, model, speed=True)

    store = AnswerStore(tmp_path / "sets", prompts, 4, slots=2, threads=2, speed_tokens=4)
    records = answer(store)
    store.close()
    assert [(r["system"], r["alpha"], r["prompt"], r["seed"]) for r in records] == [
        ("plain", 0.0, 0, 3),
        ("plain", 1.0, 0, 3),
    ]
    meta = store.meta("plain")
    assert meta["answers"] == 2 and meta["weights_bytes"] == model.stat().st_size
    assert set(meta["decode_tok_s"]) == {"0.0", "1.0"} and all(v > 0 for v in meta["decode_tok_s"].values())
    saved = (tmp_path / "sets" / "plain.jsonl").stat().st_mtime_ns
    again = AnswerStore(tmp_path / "sets", prompts, 4, slots=2, threads=2)
    assert answer(again) == records and again._base is None  # read back: no model loaded
    assert (tmp_path / "sets" / "plain.jsonl").stat().st_mtime_ns == saved
    os.utime(model, ns=(saved + 10**9, saved + 10**9))  # the model file was written again
    assert answer(again) == records
    again.close()
    assert (tmp_path / "sets" / "plain.jsonl").stat().st_mtime_ns != saved
    with pytest.raises(ClmError, match="other prompts"):
        AnswerStore(tmp_path / "sets", split_prompts(0).held_out[1:2], 4, slots=2, threads=2)


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
