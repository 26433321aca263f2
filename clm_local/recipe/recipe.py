"""`clm-local recipe default`: regenerate the default CLM model from nothing but PyPI and this repo.

1. split the project's prompts into train, dev and held-out (seeded); the dev prompts choose the
   training settings (`recipe tune`), the held-out ones measure the result (`eval-alpha`,
   `recipe compare`), and neither reaches training;
2. sample answers to the train prompts from the base SmolLM2 and keep concise/long-winded pairs;
3. train P on CPU (the project's trainer): SFT on the chosen answers when `sft_epochs` says so,
   then DPO;
4. graft P onto the base GGUF (the project's converter);
5. with --ship, copy P and its manifest into the package (`clm_local/default_pre_layer/`), the
   files the default chat model is built from.
Every step's settings, counts and duration go to `recipe_log.jsonl` in the work folder.
"""

from __future__ import annotations

import json
import resource
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from clm_local.errors import ClmError
from clm_local.files import write_json

if TYPE_CHECKING:
    from clm_local.training.trainer import StepCallback, TrainResult


@dataclass(frozen=True)
class RecipeSettings:
    seed: int = 0
    train_prompts: int | None = None  # None: every train prompt of the split
    samples_per_prompt: int = 4
    max_tokens: int = 128  # per sampled answer; longer ones count as unfinished (long-winded)
    sample_temp: float = 0.9
    dev_prompts: int = 30  # the last train prompts of the split, kept for `recipe tune`
    # Chosen by `recipe tune` (tune.py's rule, on the dev prompts): 5e-5 collapsed the policy, 5e-6
    # without SFT left no headroom past alpha 1 (the text breaks at 2).
    epochs: int = 2
    lr: float = 2.5e-6
    beta: float = 0.1
    sft_epochs: int = 1  # SFT on the chosen answers before DPO (0: none)
    sft_lr: float = 5e-6
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

    if work.exists() and any(work.iterdir()) and not force:
        raise ClmError(f"{work} exists and is not empty (use --force to start over there)")
    if force and work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    log = RecipeLog(work / "recipe_log.jsonl")
    log.step("settings", **asdict(settings))

    base = base_model_path()
    split = split_prompts(settings.seed, limit=settings.train_prompts, dev=settings.dev_prompts)
    write_json(work / "prompts.json", asdict(split))
    log.step("prompts", train=len(split.train), dev=len(split.dev), held_out=len(split.held_out))

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
    started = time.monotonic()
    result = train_pre_layer(base, data, checkpoint, settings)
    log.step(
        "train",
        optimizer_steps=result.step,
        metrics=result.metrics,
        seconds=round(time.monotonic() - started, 1),
        peak_rss_bytes=peak_rss_bytes(),
    )

    out = work / "default-clm.gguf"
    convert(checkpoint, out, ConvertOptions(base=base))
    log.step("convert", output=str(out), bytes=out.stat().st_size)

    if ship:
        SHIPPED_PRE_LAYER.mkdir(exist_ok=True)
        for name in ("pre_layer.safetensors", "clm_manifest.json"):
            shutil.copy2(checkpoint / name, SHIPPED_PRE_LAYER / name)
        log.step("ship", folder=str(SHIPPED_PRE_LAYER))
    return out


def train_pre_layer(
    base: Path,
    data: Path,
    checkpoint: Path,
    settings: RecipeSettings,
    *,
    eval_data: Path | None = None,
    on_step: StepCallback | None = None,
) -> TrainResult:
    """P trained on `data` with the recipe's settings: optional SFT on the chosen answers, then DPO.

    eval_data: preference pairs the DPO run measures P on at its end (never trained on); on_step:
    told after every optimizer step of both runs (training.trainer.StepCallback).
    """
    from clm_local.training import TrainOptions, train

    common = {
        "batch_size": settings.batch_size,
        "max_length": settings.max_length,
        "seed": settings.seed,
        "device": "cpu",
        "dtype": "fp32",
        "force": True,
    }
    init_from = None
    if settings.sft_epochs:
        init_from = checkpoint.with_name(checkpoint.name + "-sft")
        sft = TrainOptions(objective="sft", lr=settings.sft_lr, epochs=settings.sft_epochs, **common)
        train(base, chosen_answers(data), init_from, sft, on_step=on_step)
    dpo = TrainOptions(
        objective="dpo",
        beta=settings.beta,
        lr=settings.lr,
        epochs=settings.epochs,
        init_from=init_from,
        eval_data=eval_data,
        **common,
    )
    return train(base, data, checkpoint, dpo, on_step=on_step)


def peak_rss_bytes() -> int:
    """The process's high-water mark of resident memory (Linux and macOS units differ)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def chosen_answers(data: Path) -> Path:
    """The chosen answers of the pairs in `data` as SFT records (`sft.jsonl` beside it)."""
    out = data.with_name("sft.jsonl")
    with data.open() as pairs, out.open("w") as records:
        for line in pairs:
            pair = json.loads(line)
            records.write(json.dumps({"prompt": pair["prompt"], "completion": pair["chosen"]}) + "\n")
    return out
