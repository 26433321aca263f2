"""benchmarks/teach_sim.py: its judge, and one whole run at the smallest size.

The run serves a tiny random llama base (tests/tiny_hf.py: a real tokenizer and chat template,
answers of noise, training in seconds) with the smallest teach settings (3 pairs, one DPO step),
labels 3 pairs through its HTTP API, trains, switches to the dial and answers 2 held-out prompts
at every alpha; a second run with the same --work finds the row done and redoes nothing.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from clm_local.benchmarks import teach_sim

TINY_TEACH = {
    "needed": 3, "min_held_out": 1, "held_out_share": 0.2, "target_steps": 1, "min_epochs": 1,
    "max_epochs": 1, "sft_epochs": 0, "batch_size": 2, "max_length": 64,
}  # fmt: skip


def test_the_person_prefers_fewer_list_lines() -> None:
    prose = "Boil water, add the egg, wait nine minutes.\nThen cool it."
    bullets = "Steps:\n- boil water\n- add the egg\n* wait\n• cool it"
    numbered = "Steps:\n1. boil water\n2) add the egg"
    assert teach_sim.list_lines(prose) == 0
    assert teach_sim.list_lines(bullets) == 4
    assert teach_sim.list_lines(numbered) == 2
    assert teach_sim.list_lines("In 2024. the year -5 degrees") == 0  # no line starts an item
    assert teach_sim.judge(prose, bullets) == "a"
    assert teach_sim.judge(bullets, numbered) == "b"
    assert teach_sim.judge(prose, prose + " More words.") is None  # length alone is a tie
    assert teach_sim.measures(numbered, "stop") == {"list_share": 1.0, "list_lines": 2.0, "words": 8.0,
                                                    "ended": 1.0}  # fmt: skip


def test_the_change_from_alpha_0_is_paired_prompt_by_prompt() -> None:
    def answer(alpha: float, prompt: int, text: str) -> dict:
        return {"alpha": alpha, "prompt": prompt, "finish": "stop", "text": text}

    listed, plain = "Tips:\n- one\n- two", "One, then two."
    answers = [answer(0.0, p, listed if p < 6 else plain) for p in range(12)]
    answers += [answer(1.0, p, plain) for p in range(12)]  # every list gone
    answers += [answer(2.0, p, plain if p < 6 else listed) for p in range(12)]  # as many, elsewhere
    cells = {c["alpha"]: c for c in teach_sim.summarise(answers, [0.0, 1.0, 2.0])}
    assert "list_share_change" not in cells[0.0]
    change = cells[1.0]["list_share_change"]
    assert change["mean"] == -0.5 and change["low"] < -0.5 < change["high"] < 0
    assert cells[1.0]["list_lines_change"]["mean"] == -1.0
    assert teach_sim.moved(cells[1.0])
    # The same share at alpha 2 as at 0, but on other prompts: unmoved on average, wide interval.
    assert cells[2.0]["list_share"]["mean"] == cells[0.0]["list_share"]["mean"]
    assert cells[2.0]["list_share_change"]["low"] < 0 < cells[2.0]["list_share_change"]["high"]
    assert not teach_sim.moved(cells[2.0])
    assert teach_sim.moves({"cells": list(cells.values())}, "list_share") == "a=1: -0.50 [-0.75, -0.25]"


def test_parse_pairs_refuses_what_is_not_increasing() -> None:
    assert teach_sim.parse_pairs("25,50,100") == [25, 50, 100]
    for bad in ("", "50,25", "0,5", "a", "5,5"):
        with pytest.raises(teach_sim.SimError):
            teach_sim.parse_pairs(bad)


def test_a_smallest_run_writes_its_row_and_resumes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from tiny_hf import make_tiny_model, write_tiny_gguf

    base = write_tiny_gguf(make_tiny_model(tmp_path / "hf", "llama", expanded=False), tmp_path / "tiny.gguf")
    monkeypatch.setenv("CLM_LOCAL_TEACH_SETTINGS", json.dumps(TINY_TEACH))
    # The tiny model's answers are noise, without lists: here the shorter wins, so every view counts.
    monkeypatch.setattr(teach_sim, "judge", lambda a, b: "a" if len(a) <= len(b) else "b")
    work, out, png = tmp_path / "work", tmp_path / "sim.json", tmp_path / "sim.png"
    args = ["--model", str(base), "--pairs", "3", "--n-eval", "2", "--max-tokens", "8", "--parallel", "2",
            "--ctx", "256", "--threads", "1", "--work", str(work), "--out", str(out),
            "--plot", str(png)]  # fmt: skip
    assert teach_sim.main(args) == 0
    result = json.loads(out.read_text())
    (row,) = result["rows"]
    assert row["pairs"] == 3 and row["views"] >= 3 and row["dial"] == "sim-3"
    assert [c["alpha"] for c in row["cells"]] == list(teach_sim.ALPHAS)
    assert all(c["n"] == 2 for c in row["cells"])
    assert all(
        c["list_share"]["low"] <= c["list_share"]["mean"] <= c["list_share"]["high"] for c in row["cells"]
    )
    assert set(row["times"]) >= {"label_s", "train_s", "load_s", "eval_s"}
    assert png.stat().st_size > 0
    printed = capsys.readouterr().out
    assert "N=   3" in printed and "| pairs | lists a=0 |" in printed
    views = (work / "views.jsonl").read_text()

    assert teach_sim.main(args) == 0  # the same run again: the row is there, nothing is redone
    assert json.loads(out.read_text())["rows"] == result["rows"]
    assert (work / "views.jsonl").read_text() == views

    # --report recomputes the measures from the answers alone: the same numbers, no server
    assert teach_sim.main(["--report", "--work", str(work), "--out", str(out)]) == 0
    assert json.loads(out.read_text())["rows"] == result["rows"]
    assert all(("list_share_change" in c) == (c["alpha"] != 0) for c in row["cells"])
