"""How P is trained on the pairs one person labelled: the split, the step count, the rates.

The default model's recipe (recipe.py, docs/default-model.md) trained P on 124 pairs: one epoch
of SFT on the chosen answers at lr 5e-6, then two epochs of DPO at lr 2.5e-6 (beta 0.1, batch
4): 31 + 62 optimizer steps. Its tuning measured the limits of that budget: DPO at twice the
rate (5e-6, 62 steps) already broke the text at alpha 2. On 40 labelled pairs the same epochs
are 10 + 20 steps: a third of the push, and the dial barely moves. So here the recipe's *steps*
are kept, not its epochs:
- DPO takes about TARGET_STEPS (60) optimizer steps at the recipe's rate: few pairs are seen over
  more epochs (at most MAX_EPOCHS, where memorising a dozen pairs would take over), many pairs in
  one or two;
- SFT on the chosen answers first, one epoch at the recipe's rate, as the recipe does (it is
  what lets alpha go past 1 without breaking the text);
- measured on the default model (docs/teach.md, "Measurements"): four times these rates gave
  perfect held-out numbers and broken text at alpha 1; SFT for half as many epochs as DPO (4)
  pushed answers to fragments; these settings gave one-sentence, on-topic answers at alpha 1
  for a one-sentence preference.
A fifth of the pairs (at least MIN_HELD_OUT) is held out: never trained on, and measured at the
end, so the person sees whether P learned their preference or only their pairs.

Every number can be overridden for experiments with CLM_LOCAL_TEACH_SETTINGS, a JSON object of
TeachSettings fields (e.g. `{"target_steps": 8}`), read when the server starts.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
from dataclasses import dataclass

from clm_local.errors import ClmError

SETTINGS_VARIABLE = "CLM_LOCAL_TEACH_SETTINGS"


@dataclass(frozen=True)
class TeachSettings:
    """What a teach training run uses; see the module docstring for why each value."""

    # The fewest pairs training accepts: 4 held out (a held-out accuracy in steps of 25%, the
    # coarsest that still says something) and 12 to train on (3 batches: one epoch is 3 steps).
    needed: int = 16
    held_out_share: float = 0.2
    min_held_out: int = 4
    target_steps: int = 60  # DPO optimizer steps aimed at (epochs = target / steps per epoch)
    min_epochs: int = 1
    max_epochs: int = 12
    lr: float = 2.5e-6
    beta: float = 0.1
    sft_epochs: int = 1  # 0: no SFT
    sft_lr: float = 5e-6
    batch_size: int = 4
    max_length: int = 512  # tokens of prompt + answer; longer pairs are cut (the prompt's start first)
    seed: int = 0

    def check(self) -> TeachSettings:
        if self.min_held_out < 1 or not 0 < self.held_out_share < 1:
            raise ClmError("teach settings: a held-out part of at least one pair is needed")
        if self.needed < self.min_held_out + 1:
            raise ClmError("teach settings: 'needed' must leave at least one pair to train on")
        if min(self.target_steps, self.min_epochs, self.batch_size) < 1 or self.max_epochs < self.min_epochs:
            raise ClmError("teach settings: steps, epochs and batch size must be positive")
        if not (self.lr > 0 and self.beta > 0 and self.sft_lr > 0 and self.sft_epochs >= 0):
            raise ClmError("teach settings: rates and beta must be positive")
        if self.max_length < 16:
            raise ClmError("teach settings: max_length must be at least 16")
        return self


def settings_from_environment() -> TeachSettings:
    """TeachSettings with CLM_LOCAL_TEACH_SETTINGS's overrides (a JSON object), checked."""
    text = os.environ.get(SETTINGS_VARIABLE, "").strip()
    if not text:
        return TeachSettings()
    try:
        overrides = json.loads(text)
    except ValueError as error:
        raise ClmError(f"{SETTINGS_VARIABLE} is not valid JSON ({error})") from None
    if not isinstance(overrides, dict):
        raise ClmError(f"{SETTINGS_VARIABLE} must be a JSON object of settings")
    known = {f.name: f.type for f in dataclasses.fields(TeachSettings)}
    for key, value in overrides.items():
        if key not in known:
            raise ClmError(f"{SETTINGS_VARIABLE}: unknown setting {key!r} (known: {', '.join(known)})")
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ClmError(f"{SETTINGS_VARIABLE}: {key} must be a number")
        if known[key] == "int" and not isinstance(value, int):
            raise ClmError(f"{SETTINGS_VARIABLE}: {key} must be an integer")
    try:
        return dataclasses.replace(TeachSettings(), **overrides).check()
    except TypeError as error:
        raise ClmError(f"{SETTINGS_VARIABLE}: {error}") from None


@dataclass(frozen=True)
class Plan:
    """How many pairs go where, and how many steps each stage takes."""

    train_pairs: int
    held_out_pairs: int
    steps_per_epoch: int
    sft_epochs: int
    dpo_epochs: int

    @property
    def sft_steps(self) -> int:
        return self.sft_epochs * self.steps_per_epoch

    @property
    def dpo_steps(self) -> int:
        return self.dpo_epochs * self.steps_per_epoch


def held_out_count(pairs: int, settings: TeachSettings) -> int:
    return max(settings.min_held_out, round(pairs * settings.held_out_share))


def plan(pairs: int, settings: TeachSettings) -> Plan:
    """The split and the epochs for `pairs` usable pairs (at least settings.needed)."""
    held_out = held_out_count(pairs, settings)
    train = pairs - held_out
    per_epoch = math.ceil(train / settings.batch_size)
    epochs = min(settings.max_epochs, max(settings.min_epochs, math.ceil(settings.target_steps / per_epoch)))
    return Plan(train, held_out, per_epoch, settings.sft_epochs, epochs)


def split(records: list[dict], held_out: int) -> tuple[list[dict], list[dict]]:
    """(train, held-out): the held-out pairs are those whose text hashes lowest. Why by hash: the
    same pair stays held out when more pairs are added (mostly), whatever order they came in,
    and no random state is needed to reproduce a split."""

    def key(record: dict) -> str:
        text = json.dumps([record.get(f) for f in ("prompt", "chosen", "rejected")], ensure_ascii=True)
        return hashlib.sha256(text.encode()).hexdigest()

    ordered = sorted(range(len(records)), key=lambda i: key(records[i]))
    chosen = set(ordered[:held_out])
    return (
        [r for i, r in enumerate(records) if i not in chosen],
        [r for i, r in enumerate(records) if i in chosen],
    )
