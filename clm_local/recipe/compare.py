"""`clm-local recipe compare`: the paper's central claim, tested fairly at this scale.

Given a finished `recipe default` folder (WORK), on the recipe's own pairs:
1. the sweep (sweep.py): CLM and full-model DPO (full_dpo.py) each trained at a grid of learning
   rates, each picked by one rule on the dev prompts and written to `sweep.json` before any
   held-out prompt is answered (`--sweep-only` stops there, so the choice can be committed first);
2. each system at its chosen rate trained with `seeds` seeds (runs.py; the sweep's run is the
   first);
3. the held-out prompts answered greedily by each seed's model, at each alpha (answer_sets.py):
   - base: the base model (alpha 0);
   - clm/logits and clm/embed: CLM in both modes;
   - full-dpo/dera: z = alpha * z_fullDPO + (1 - alpha) * z_base, the logit mix a user can do
     without CLM (DeRa; alpha 1 is full DPO itself);
   - full-dpo/expo: theta_base + alpha * (theta_dpo - theta_base), each alpha its own F32 GGUF
     (expo.py; alpha 1 is full DPO itself);
4. cells pooled over seeds with hierarchical-bootstrap intervals (cells.py), the verdict
   (verdict.py), and what each system cost to train and to serve.

Everything lives in one folder (WORK/compare, or WORK/compare-quick for `--quick`): `runs/` (one
folder per training, finished once), the answer sets (one JSONL per system and seed, answered
once), `sweep.json`, and the report: `compare.json` (every cell with its per-seed means),
`compare.md`, `compare.png`. A run stopped part way keeps every finished training and answer set
and goes on from there.
"""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

from clm_local.errors import ClmError
from clm_local.files import write_json, write_text
from clm_local.recipe.cells import BASE, cells_from_records, format_table, plot
from clm_local.recipe.recipe import RecipeSettings

COMPARE_ALPHAS = (0.5, 1.0, 1.5, 2.0, 3.0)
SEEDS = 3
SPEED_TOKENS = 64  # tokens of the single-answer decode-speed probe at each alpha
# CI size: 3 prompts (the test recipe has 2 held out), 2 alphas, 16 tokens, 2 seeds; CLM sweeps 2
# rates (the recipe's, whose run is the recipe's own P, and twice it), full DPO one (the recipe's):
# four trainings in all.
QUICK = {
    "alphas": (1.0, 2.0),
    "n_prompts": 3,
    "max_tokens": 16,
    "seeds": 2,
    "lrs": {"clm": (2.5e-6, 5e-6), "full-dpo": (2.5e-6,)},
}
CLM_LOGITS, CLM_EMBED, DERA, EXPO = "clm/logits", "clm/embed", "full-dpo/dera", "full-dpo/expo"
PUBLISHED = "fair-compare"  # the report's file names under --publish DIR


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
    """The recipe run's P: its training cost, the checkpoints' steps with the time and peak memory
    the recipe logged."""
    train = _logged_step(work, "train")
    if "seconds" not in train or "peak_rss_bytes" not in train:
        raise ClmError(f"{work} was made by an older clm-local that logged no training cost: re-run it")
    return checkpoint_cost(work / "ckpt") | {
        "seconds": train["seconds"],
        "peak_rss_bytes": train["peak_rss_bytes"],
    }


def checkpoint_cost(checkpoint: Path) -> dict:
    """P's parameters and the optimizer steps of its DPO checkpoint and the SFT one before it, if any."""
    from safetensors.numpy import load_file

    weights = load_file(checkpoint / "pre_layer.safetensors")
    checkpoints = [checkpoint, checkpoint.with_name(checkpoint.name + "-sft")]
    manifests = [json.loads((c / "clm_manifest.json").read_text()) for c in checkpoints if c.is_dir()]
    return {
        "parameters": sum(tensor.size for tensor in weights.values()),
        "steps": sum(manifest["progress"]["step"] for manifest in manifests),
    }


def run_compare(
    work: Path,
    *,
    alphas: Sequence[float] = COMPARE_ALPHAS,
    seeds: int = SEEDS,
    lrs: dict[str, Sequence[float]] | None = None,
    n_prompts: int | None = None,
    max_tokens: int = 128,
    slots: int = 8,
    threads: int | None = None,
    folder: Path | None = None,
    sweep_only: bool = False,
) -> dict:
    """Sweep, train the seeds, answer, measure; write and return the report (the sweep's alone
    with `sweep_only`). Everything finished before is reused (see the module docstring)."""
    from clm_local.recipe.answer_sets import AnswerStore
    from clm_local.recipe.runs import SYSTEMS, Run, trained
    from clm_local.recipe.sweep import CLM_LRS, FULL_LRS, run_sweep
    from clm_local.recipe.verdict import judge

    work = work.resolve()
    settings = logged_settings(work)
    if not (work / "default-clm.gguf").is_file():
        raise ClmError(f"{work / 'default-clm.gguf'} is missing: the recipe run in {work} did not finish")
    if seeds < 1:
        raise ClmError("--seeds must be at least 1")
    lrs = lrs or {"clm": CLM_LRS, "full-dpo": FULL_LRS}
    folder = folder or work / "compare"
    folder.mkdir(exist_ok=True)
    sweep = run_sweep(work, folder, settings, lrs, max_tokens=max_tokens, slots=slots, threads=threads)
    if sweep_only:
        return {"sweep": sweep}

    seed_list = [settings.seed + k for k in range(seeds)]
    models = {
        (system, seed): trained(work, folder, Run(system, sweep["chosen"][system], seed), settings, threads)
        for system in SYSTEMS
        for seed in seed_list
    }
    held_out = json.loads((work / "prompts.json").read_text())["held_out"][:n_prompts]
    store = AnswerStore(
        folder / f"answers-{len(held_out)}p-{max_tokens}t",
        held_out,
        max_tokens,
        slots=slots,
        threads=threads,
        speed_tokens=min(SPEED_TOKENS, max_tokens),
    )
    print(f"[compare] answering {len(held_out)} held-out prompts", file=sys.stderr)
    records = store.answer_set("base", None, BASE, [0.0], store.plain, speed=True)
    for seed in seed_list:
        clm, full, first = models["clm", seed].model, models["full-dpo", seed].model, seed == seed_list[0]
        for key, system, mode in (("clm-logits", CLM_LOGITS, "logits"), ("clm-embed", CLM_EMBED, "embed")):
            records += store.answer_set(
                f"{key}-seed{seed}", seed, system, alphas, store.clm(mode), clm, speed=first
            )
        records += store.answer_set(f"dera-seed{seed}", seed, DERA, alphas, store.mix, full, speed=first)
        for alpha in alphas:
            key = f"expo-seed{seed}-alpha{alpha:g}"
            records += store.answer_set(key, seed, EXPO, [alpha], store.expo(alpha), full, speed=first)
    store.close()

    cells = cells_from_records(records)
    costs = {
        "train": train_costs(models),
        "sweep": {
            "trainings": len(sweep["costs"]),
            "seconds": round(sum(cost["seconds"] for cost in sweep["costs"].values()), 1),
        },
        "serve": serve_costs(store, seed_list[0], alphas),
    }
    report = {
        "settings": asdict(settings),
        "sweep": sweep,
        "seeds": seed_list,
        "prompts": len(held_out),
        "max_tokens": max_tokens,
        "alphas": list(alphas),
        "costs": costs,
        "cells": [asdict(cell) for cell in cells],
        "verdict": judge(cells, records),
    }
    write_json(folder / "compare.json", report)
    plot(cells, folder / "compare.png")
    write_text(folder / "compare.md", format_report(report, cells) + "\n")
    return report


def train_costs(models: dict) -> dict:
    """Per trained system at its chosen rate: each seed's cost, their mean time and largest peak."""
    costs: dict = {}
    for (system, seed), model in models.items():
        mine = costs.setdefault(system, {"lr": model.run.lr, "per_seed": {}})
        mine["per_seed"][str(seed)] = model.cost | ({"reused": model.reused} if model.reused else {})
    for mine in costs.values():
        runs = list(mine["per_seed"].values())
        mine |= {
            "parameters": runs[0]["parameters"],
            "steps": runs[0]["steps"],
            "seconds": round(sum(r["seconds"] for r in runs) / len(runs), 1),
            "peak_rss_bytes": max(r["peak_rss_bytes"] for r in runs),
        }
    return costs


def serve_costs(store, seed: int, alphas: Sequence[float]) -> dict:
    """Per system: the bytes of weights it holds and the single-answer decode speed at each alpha
    (the first seed's models, measured as they answered)."""
    sets = {
        BASE: ["base"],
        CLM_LOGITS: [f"clm-logits-seed{seed}"],
        CLM_EMBED: [f"clm-embed-seed{seed}"],
        DERA: [f"dera-seed{seed}"],
        EXPO: [f"expo-seed{seed}-alpha{alpha:g}" for alpha in alphas],
    }
    costs = {}
    for system, keys in sets.items():
        metas = [store.meta(key) for key in keys]
        costs[system] = {
            "weights_bytes": max((m.get("weights_bytes", 0) for m in metas), default=0),
            "decode_tok_s": {
                alpha: speed for m in metas for alpha, speed in m.get("decode_tok_s", {}).items()
            },
            "answer_seconds": round(sum(m.get("seconds", 0) for m in metas), 1),
        }
    return costs


def format_report(report: dict, cells) -> str:
    from clm_local.recipe.sweep import format_sweep

    sweep = report["sweep"]
    return "\n\n".join(
        [
            "# CLM against full fine-tuning, each at its best, over seeds",
            "Written by `clm-local recipe compare`; how it is run and why: "
            "[default-model.md](default-model.md#the-fair-comparison).",
            f"Sweep ({sweep['dev_prompts']} dev prompts, alpha 1, seed {sweep['seed']}). "
            f"Rule: {sweep['rule']}",
            format_sweep(sweep),
            f"Held out: {report['prompts']} prompts, greedy, at most {report['max_tokens']} tokens, "
            f"seeds {', '.join(map(str, report['seeds']))}; mean [95% interval over seeds and prompts].",
            format_table(cells),
            format_costs(report["costs"]),
            "\n".join(f"- {line}" for line in report["verdict"]["lines"]),
        ]
    )


def format_costs(costs: dict) -> str:
    lines = [
        "| trained | lr | parameters | steps (SFT + DPO) | time: mean (each seed) | peak memory |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, cost in costs["train"].items():
        # each seed's time shown too: a training timed beside other work stands out from the rest
        each = ", ".join(f"{run['seconds'] / 60:.1f}" for run in cost["per_seed"].values())
        lines.append(
            f"| {name} | {cost['lr']:g} | {cost['parameters'] / 1e6:.1f} M | {cost['steps']} | "
            f"{cost['seconds'] / 60:.1f} min ({each}) | {cost['peak_rss_bytes'] / 2**30:.2f} GiB |"
        )
    sweep = costs["sweep"]
    lines += [
        "",
        f"The sweep: {sweep['trainings']} trainings, {sweep['seconds'] / 60:.1f} min in all "
        "(reused ones included).",
        "",
        "| served | weights | decode tok/s by alpha (one answer alone) |",
        "|---|---:|---|",
    ]
    for name, cost in costs["serve"].items():
        speeds = ", ".join(f"{float(alpha):g}: {speed:.1f}" for alpha, speed in cost["decode_tok_s"].items())
        lines.append(f"| {name} | {cost['weights_bytes'] / 2**20:.0f} MiB | {speeds} |")
    return "\n".join(lines)


def publish(folder: Path, target: Path) -> list[Path]:
    """Copy the report (and the sweep) to `target` as fair-compare.{json,md,png}, fair-compare-sweep.json."""
    target.mkdir(parents=True, exist_ok=True)
    copied = []
    for source, name in (
        ("sweep.json", f"{PUBLISHED}-sweep.json"),
        ("compare.json", f"{PUBLISHED}.json"),
        ("compare.md", f"{PUBLISHED}.md"),
        ("compare.png", f"{PUBLISHED}.png"),
    ):
        if (folder / source).is_file():
            shutil.copyfile(folder / source, target / name)
            copied.append(target / name)
    return copied
