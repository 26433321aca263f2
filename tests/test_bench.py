"""`clm-local bench` runs end to end on the default model and prints the promised JSON; the
generation option it relies on (`stop_at_end=False`) times a fixed number of tokens.

A benchmark is not a test: the figures themselves are not checked, only that every configuration
ran and reported positive numbers. Tiny settings keep it to a few seconds per run.
"""

from __future__ import annotations

import json
import subprocess
import sys
import warnings

from clm_local.benchmarks.worker import CONFIGS

import clm_local
from clm_local.chat import Decoder, SamplingParams
from clm_local.default_model import base_model_path

FIGURES = ("prefill_tps", "decode_tps", "peak_rss_mb")


def test_bench_prints_json_with_the_four_configs() -> None:
    command = [
        sys.executable,
        "-m",
        "clm_local.cli.main",
        "bench",
        "--prompt-tokens",
        "8",
        "--gen-tokens",
        "4",
        "--repeat",
        "1",
        "--ctx",
        "256",
        "--threads",
        "1",
        "--json",
    ]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert set(report) == {"machine", "configs"}
    assert report["machine"]["threads"] == 1
    assert tuple(report["configs"]) == CONFIGS
    for config, figures in report["configs"].items():
        for figure in FIGURES:
            assert figures[figure] > 0, (config, figure)
    assert report["configs"]["logits"]["kv_cache_mb"] > report["configs"]["embed"]["kv_cache_mb"]


def test_bench_adds_the_busy_machine_and_first_token_comparisons() -> None:
    tiny = ["--prompt-tokens", "8", "--gen-tokens", "4", "--repeat", "1", "--ctx", "256"]
    extra = ["--busy", "--first-token", "--json"]
    command = [sys.executable, "-m", "clm_local.cli.main", "bench", *tiny, *extra]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert [row["setting"] for row in report["busy"]["rows"]][1] == "default (tuned)"
    for row in report["busy"]["rows"]:
        assert row["quiet_tps"] > 0 and row["busy_tps"] > 0
    assert set(report["first_token"]) == {
        "clm-local chat --prompt",
        "clm-local chat --prompt --alpha 0.8",
        "clm-local chat --prompt --alpha 0.8 --mode embed",
        "llama_cpp.Llama",
    }
    assert report["first_token"]["llama_cpp.Llama"]["over_llama_cpp"] == 1.0
    assert all(row["median_s"] > 0 for row in report["first_token"].values())


def test_bench_refuses_a_generation_too_short_to_time() -> None:
    command = [sys.executable, "-m", "clm_local.cli.main", "bench", "--gen-tokens", "1"]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    assert result.returncode == 1
    assert result.stderr.startswith("error: --gen-tokens must be at least 2")


def test_generation_can_run_past_the_end_of_the_answer() -> None:
    """The benchmark's fixed-length generation: the same loop, end-of-generation tokens included."""
    greedy = SamplingParams(temp=0.0)
    with warnings.catch_warnings(), clm_local.load(base_model_path(), n_ctx=128, n_threads=1) as model:
        warnings.simplefilter("ignore")  # a plain model: alpha has no effect
        prompt = model.tokenize(
            "<|im_start|>user\nSay yes.<|im_end|>\n<|im_start|>assistant\n", parse_special=True
        )
        answer = list(Decoder(model).generate(prompt, sampling=greedy, max_tokens=24))
        longer = list(Decoder(model).generate(prompt, sampling=greedy, max_tokens=24, stop_at_end=False))
        assert len(answer) < 24
        assert len(longer) == 24
        assert longer[: len(answer)] == answer
        assert model.is_end_of_generation(longer[len(answer)])
