"""`clm-local recipe compare`: the paper's comparison at this scale, on the recipe's own data.

Given a finished `recipe default` folder, it trains the baseline (every weight of the base, same
pairs and settings: full_dpo.py) and answers the held-out prompts greedily with:
- base: the base model (alpha 0);
- clm/logits and clm/embed: the recipe's CLM model at each alpha, in both modes;
- full-dpo mix: z = alpha * z_fullDPO + (1 - alpha) * z_base, the two-model mix a user can do
  without CLM (alpha 1 is full DPO itself);
and reports every cell's mean and 95% bootstrap interval (cells.py) with each system's training
cost, as `compare.json`, `answers.jsonl` and `compare.png` in WORK/compare/.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

from clm_local.errors import ClmError
from clm_local.recipe.cells import BASE, System, evaluate_systems, format_table, plot
from clm_local.recipe.recipe import RecipeSettings

COMPARE_ALPHAS = (0.5, 1.0, 1.25, 1.5, 2.0, 3.0)
QUICK = {"alphas": (1.0, 2.0), "n_prompts": 3, "max_tokens": 16}


def logged_settings(work: Path) -> RecipeSettings:
    """The settings a `recipe default` run in WORK used, from its log."""
    log = work / "recipe_log.jsonl"
    if not log.is_file():
        raise ClmError(
            f"{work} holds no recipe_log.jsonl: run `clm-local recipe default --work {work}` first"
        )
    for line in log.read_text().splitlines():
        record = json.loads(line)
        if record["step"] == "settings":
            known = {f for f in RecipeSettings.__dataclass_fields__}
            return RecipeSettings(**{k: v for k, v in record.items() if k in known})
    raise ClmError(f"{log} has no settings step")


def _logged_step(work: Path, step: str) -> dict:
    records = [json.loads(line) for line in (work / "recipe_log.jsonl").read_text().splitlines()]
    found = [r for r in records if r["step"] == step]
    if not found:
        raise ClmError(f"{work}/recipe_log.jsonl has no {step} step: the recipe run did not finish")
    return found[-1]


def clm_cost(work: Path) -> dict:
    """P's training cost: parameters and optimizer steps (SFT's too) from its checkpoints, time
    and peak memory as the recipe logged them."""
    from safetensors.numpy import load_file

    train = _logged_step(work, "train")
    if "seconds" not in train or "peak_rss_bytes" not in train:
        raise ClmError(f"{work} was made by an older clm-local that logged no training cost: re-run it")
    weights = load_file(work / "ckpt" / "pre_layer.safetensors")
    checkpoints = [work / "ckpt", work / "ckpt-sft"]
    manifests = [json.loads((c / "clm_manifest.json").read_text()) for c in checkpoints if c.is_dir()]
    return {
        "parameters": sum(tensor.size for tensor in weights.values()),
        "steps": sum(manifest["progress"]["step"] for manifest in manifests),
        "seconds": train["seconds"],
        "peak_rss_bytes": train["peak_rss_bytes"],
    }


def run_compare(
    work: Path,
    *,
    alphas: Sequence[float] = COMPARE_ALPHAS,
    n_prompts: int | None = None,
    max_tokens: int = 128,
    slots: int = 8,
    threads: int | None = None,
) -> dict:
    """Train the full-DPO baseline (once: kept in WORK), answer, measure, write and return the report."""
    import clm_local
    from clm_local.default_model import base_model_path
    from clm_local.recipe.answers import ClmSource, MixSource, PlainSource, context_for, templated_prompts
    from clm_local.recipe.full_dpo import train_full_dpo

    settings = logged_settings(work)
    clm_path = work / "default-clm.gguf"
    if not clm_path.is_file():
        raise ClmError(f"{clm_path} is missing: the recipe run in {work} did not finish")
    held_out = json.loads((work / "prompts.json").read_text())["held_out"][:n_prompts]
    base_path = base_model_path()
    folder = work / "compare"
    folder.mkdir(exist_ok=True)

    full_path, cost_path = work / "full-dpo.gguf", work / "full-dpo-cost.json"
    if not (full_path.is_file() and cost_path.is_file()):
        print("[compare] training the full-model DPO baseline", file=sys.stderr)
        cost = train_full_dpo(base_path, work / "train.jsonl", full_path, settings)
        cost_path.write_text(json.dumps(asdict(cost)) + "\n")
    costs = {"clm": clm_cost(work), "full-dpo": json.loads(cost_path.read_text())}

    prompts = templated_prompts(base_path, held_out, threads)
    load = {"n_ctx": context_for(prompts, max_tokens), "n_threads": threads}
    with (
        clm_local.load(base_path, n_sequences=slots, **load) as base,
        clm_local.load(clm_path, n_sequences=2 * slots, **load) as clm,
        clm_local.load(full_path, n_sequences=slots, **load) as full,
    ):
        systems = [
            System(BASE, PlainSource(base), [0.0]),
            System("clm/logits", ClmSource(clm, "logits"), alphas),
            System("clm/embed", ClmSource(clm, "embed"), alphas),
            System("full-dpo mix", MixSource(full, base), alphas),
        ]
        cells, records = evaluate_systems(systems, prompts, base, max_tokens=max_tokens)
    report = {
        "settings": asdict(settings),
        "prompts": len(held_out),
        "max_tokens": max_tokens,
        "costs": costs,
        "cells": [asdict(cell) for cell in cells],
    }
    (folder / "compare.json").write_text(json.dumps(report, indent=1) + "\n")
    (folder / "answers.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    plot(cells, folder / "compare.png")
    (folder / "compare.md").write_text(format_table(cells) + "\n\n" + format_costs(costs) + "\n")
    return report


def format_costs(costs: dict) -> str:
    lines = ["| trained | parameters | steps | time | peak memory |", "|---|---:|---:|---:|---:|"]
    for name, cost in costs.items():
        lines.append(
            f"| {name} | {cost['parameters'] / 1e6:.1f} M | {cost['steps']} | "
            f"{cost['seconds'] / 60:.1f} min | {cost['peak_rss_bytes'] / 2**30:.2f} GiB |"
        )
    return "\n".join(lines)
