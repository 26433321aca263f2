"""A seeded, bounded fuzz: 250 mutated copies of the tests' tiny GGUFs (llama and qwen2, and with
the training extras qwen3, gemma2, gemma3 and phi3: a seeded sample of every base's targeted edits,
then random ones) through `clm-local info` (text, and JSON with --check-values) and `load` +
`logits` (+ tokenize where there is text), in child processes with a time and memory limit. No
case may kill its process, hang, end in a traceback, or return non-finite logits. `make fuzz` runs
the same with thousands of cases, every targeted edit first.

Crashers found by the long run are kept below as the recipes that make them (no binary files).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from fuzz_runner import fuzz, is_failure, summarize, write_bases
from gguf_mutations import recipes

CASES = 250  # the family files take longer per case: about as long as 300 llama and qwen2 cases
SEED = 20261128
TARGETED_SHARE = 2 / 3  # of the cases: a seeded sample of the targeted edits of all bases

EPS = "llama.attention.layer_norm_rms_epsilon"
# Mutations that once crashed or hung something, as found; each must now end in "refused" or "ok".
REGRESSIONS: list[dict] = [
    {"base": "llama_bpe", "op": "set", "key": "tokenizer.ggml.model", "type": 8, "value": "llama"},
    {"base": "llama_bpe", "op": "set", "key": "tokenizer.ggml.model", "type": 8, "value": "none"},
    {"base": "qwen2_clm", "op": "set", "key": "qwen2.rope.dimension_count", "type": 4, "value": 4},
    {"base": "llama_clm", "op": "set", "key": "llama.block_count", "type": 4, "value": 513},
    {"base": "llama_clm", "op": "set", "key": EPS, "type": 6, "value": "nan"},
    {"base": "llama_clm", "op": "set", "key": "clm.pre_layer_count", "type": 4, "value": 2147483648},
    {"base": "llama_clm", "op": "type_tag", "key": "general.architecture", "type": 9},
    {"base": "llama_bpe", "op": "set", "key": "tokenizer.chat_template", "type": 8, "value": "b:7bc3287d"},
    {"base": "qwen2_clm", "op": "nan_weights", "index": 0},
    # byte flips that put a newline or a \x1d (a line break to str.splitlines) into a quoted key
    # name: the error was more than one line (`make fuzz`, seed 1, cases 1065 and 4376)
    {
        "base": "llama_clm",
        "op": "flips",
        "flips": [
            [3883, 6],
            [3154, 148],
            [3107, 61],
            [1165, 141],
            [856, 107],
            [3160, 58],
            [69, 153],
            [2590, 105],
        ],
    },
    {
        "base": "llama_bpe",
        "op": "flips",
        "flips": [[2680, 165], [3408, 107], [1214, 12], [273, 2], [623, 114], [3764, 212]],
    },
    # aborted at the first decode (a 400-case run over the families): ggml's rope asserts
    # n_dims <= ne0 (the head size, 16), and ggml-cpu's binary ops take no F16 operand with F32
    # activations ("binary_op: unsupported types: dst: f32, src0: f32, src1: f16")
    {"base": "phi3_clm", "op": "set", "key": "phi3.rope.dimension_count", "type": 4, "value": 17},
    {"base": "gemma2_clm", "op": "tensor_field", "index": "output_norm.weight", "field": "type", "value": 1},
    # hung at the first decode (`make fuzz`, seed 3; gemma2 and phi3 too): ggml's rope skips the
    # n_dims - 2 rotated channels of each head, which with n_dims 0 steps back forever
    {"base": "gemma3_clm", "op": "set", "key": "gemma3.rope.dimension_count", "type": 4, "value": 0},
]


@pytest.fixture(scope="module")
def bases(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, bytes], dict[str, str]]:
    return write_bases(tmp_path_factory.mktemp("fuzz-bases"))


def _failures(outcomes: list[tuple[dict, str]]) -> list[str]:
    return [f"{status}: {json.dumps(recipe)}" for recipe, status in outcomes if is_failure(status)]


def test_known_crashers_are_refused_cleanly(bases, tmp_path: Path) -> None:
    files, _ = bases
    chosen = [recipe for recipe in REGRESSIONS if recipe["base"] in files]
    outcomes = fuzz(chosen, files, tmp_path)
    assert not _failures(outcomes)
    assert {status for _, status in outcomes} == {"refused"}


def test_seeded_fuzz_has_no_crash_hang_traceback_or_nan(bases, tmp_path: Path) -> None:
    files, archs = bases
    outcomes = fuzz(recipes(SEED, CASES, files, archs, targeted_share=TARGETED_SHARE), files, tmp_path)
    counts = summarize([status for _, status in outcomes])
    assert len(outcomes) == CASES
    assert not _failures(outcomes), counts
    assert counts.get("refused", 0) > CASES // 2 and counts.get("ok", 0) > 0  # the fuzz reaches both ends


FAKE_CHILD = """
import json, os, signal, sys, time
for line in sys.stdin:
    index, path = json.loads(line)
    print(f"BEGIN {index}", flush=True)
    if path.endswith("crash"):
        os.kill(os.getpid(), signal.SIGSEGV)
    if path.endswith("hang"):
        time.sleep(60)
    print(f"END {index} refused", flush=True)
"""


def test_the_harness_attributes_crashes_and_hangs_to_their_case(tmp_path: Path) -> None:
    """Guards the tests above: a child that dies or hangs is reported as that case's failure,
    and the cases after it still run."""
    from fuzz_runner import run_cases

    names = ["a", "crash", "b", "hang", "c"]
    statuses = run_cases(
        [tmp_path / name for name in names],
        case_timeout_s=3,
        child_command=[sys.executable, "-c", FAKE_CHILD],
    )
    assert statuses == ["refused", "signal 11", "refused", "timeout", "refused"]
