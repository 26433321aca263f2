"""`clm-local recipe default`: regenerate the default CLM model from nothing but PyPI and this repo.

1. split the project's prompts into train and held-out (seeded);
2. sample answers to the train prompts from the base SmolLM2 and keep concise/long-winded pairs;
3. train P with DPO on CPU (the project's trainer);
4. graft P onto the base GGUF (the project's converter);
5. with --ship, copy P and its manifest into the package (`clm_local/default_pre_layer/`), the
   files the default chat model is built from.
Every step's settings, counts and duration go to `recipe_log.jsonl` in the work folder.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from clm_local.errors import ClmError


@dataclass(frozen=True)
class RecipeSettings:
    seed: int = 0
    train_prompts: int | None = None  # None: every train prompt of the split
    samples_per_prompt: int = 4
    max_tokens: int = 128  # per sampled answer; longer ones count as unfinished (long-winded)
    sample_temp: float = 0.9
    epochs: int = 2
    lr: float = 5e-6  # 5e-5 collapsed the policy (DPO margin > 50, gibberish at alpha 1)
    beta: float = 0.1
    batch_size: int = 4
    max_length: int = 256
    threads: int | None = None


class RecipeLog:
    """Appends one JSON line per finished step and says it on stderr."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.started = time.monotonic()

    def step(self, name: str, **details: object) -> None:
        record = {"step": name, "elapsed_s": round(time.monotonic() - self.started, 1), **details}
        with self.path.open("a") as out:
            out.write(json.dumps(record) + "\n")
        print(f"[recipe] {name}: {json.dumps(details)}", file=sys.stderr)


def run_default_recipe(work: Path, settings: RecipeSettings, *, ship: bool, force: bool) -> Path:
    """Run the whole recipe in `work`; return the converted default CLM GGUF."""
    import clm_local
    from clm_local.converters.convert import ConvertOptions, convert
    from clm_local.default_model import SHIPPED_PRE_LAYER, base_model_path
    from clm_local.recipe.data_builder import build_preference_data
    from clm_local.recipe.prompts import split_prompts
    from clm_local.training import TrainOptions, train

    if work.exists() and any(work.iterdir()) and not force:
        raise ClmError(f"{work} exists and is not empty (use --force to start over there)")
    if force and work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    log = RecipeLog(work / "recipe_log.jsonl")
    log.step("settings", **asdict(settings))

    base = base_model_path()
    split = split_prompts(settings.seed, limit=settings.train_prompts)
    (work / "prompts.json").write_text(json.dumps(asdict(split), indent=1) + "\n")
    log.step("prompts", train=len(split.train), held_out=len(split.held_out))

    data = work / "train.jsonl"
    with clm_local.load(
        base, n_ctx=512, n_threads=settings.threads, n_sequences=settings.samples_per_prompt
    ) as model:
        stats = build_preference_data(
            model,
            split.train,
            data,
            samples_per_prompt=settings.samples_per_prompt,
            seed=settings.seed,
            max_tokens=settings.max_tokens,
            temp=settings.sample_temp,
        )
    log.step("data", **asdict(stats))

    checkpoint = work / "ckpt"
    options = TrainOptions(
        objective="dpo",
        beta=settings.beta,
        lr=settings.lr,
        epochs=settings.epochs,
        batch_size=settings.batch_size,
        max_length=settings.max_length,
        seed=settings.seed,
        device="cpu",
        dtype="fp32",
    )
    result = train(base, data, checkpoint, options)
    log.step("train", optimizer_steps=result.step, metrics=result.metrics)

    out = work / "default-clm.gguf"
    convert(checkpoint, out, ConvertOptions(base=base))
    log.step("convert", output=str(out), bytes=out.stat().st_size)

    if ship:
        SHIPPED_PRE_LAYER.mkdir(exist_ok=True)
        for name in ("pre_layer.safetensors", "clm_manifest.json"):
            shutil.copy2(checkpoint / name, SHIPPED_PRE_LAYER / name)
        log.step("ship", folder=str(SHIPPED_PRE_LAYER))
    return out
