"""The project's own prompts for the default preference, and their train / held-out split.

Several hundred varied requests (questions, how-tos, explanations, small tasks) are built from
templates and subjects written here, so the data set needs no download and the same seed always
gives the same prompts and the same split. Held-out prompts never reach training.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

QUESTIONS = [
    "What is {}?",
    "Can you tell me what {} is?",
    "What does {} mean?",
    "Why is {} important?",
]
QUESTION_SUBJECTS = [
    "photosynthesis",
    "a black hole",
    "inflation",
    "the water cycle",
    "machine learning",
    "a vaccine",
    "gravity",
    "democracy",
    "an atom",
    "the internet",
    "climate change",
    "a volcano",
    "DNA",
    "renewable energy",
    "a rainbow",
    "the stock market",
    "an ecosystem",
    "a computer virus",
    "the moon's phases",
    "electricity",
    "a hurricane",
    "the immune system",
    "a budget",
    "recycling",
    "the Roman Empire",
    "a healthy diet",
    "sleep",
    "a password manager",
    "compound interest",
    "an earthquake",
]
HOW_TOS = [
    "How do I {}?",
    "What is the best way to {}?",
    "Give me steps to {}.",
    "How can I learn to {}?",
]
HOW_TO_TASKS = [
    "boil an egg",
    "start running",
    "save money each month",
    "write a cover letter",
    "plant tomatoes",
    "make a cup of tea",
    "learn a new language",
    "fix a flat bicycle tire",
    "clean a laptop keyboard",
    "prepare for a job interview",
    "fall asleep faster",
    "make friends in a new city",
    "bake bread",
    "organize my desk",
    "study for an exam",
    "reduce stress",
    "change a light bulb",
    "back up my phone",
    "take better photos",
    "cook rice",
    "keep a plant alive",
    "write a short story",
    "train a puppy",
    "stay focused while working",
    "wash a wool sweater",
    "start a vegetable garden",
    "paint a room",
    "give a good presentation",
    "make pancakes",
    "learn to swim",
]
EXPLANATIONS = [
    "Explain {} to a child.",
    "Explain {} in simple words.",
    "Can you explain {}?",
]
EXPLANATION_SUBJECTS = [
    "how airplanes fly",
    "why the sky is blue",
    "how a refrigerator keeps food cold",
    "how bees make honey",
    "why leaves change color in autumn",
    "how a bank works",
    "how the heart pumps blood",
    "why we have seasons",
    "how a search engine finds pages",
    "how vaccines train the body",
    "why bread rises",
    "how a bicycle stays upright",
    "how solar panels make electricity",
    "why the ocean is salty",
    "how a camera takes a picture",
    "how email gets delivered",
    "why ice floats",
    "how plants drink water",
    "how a compass points north",
    "how our eyes see colors",
]
TASKS = [
    "Write a short poem about {}.",
    "Give me three facts about {}.",
    "Suggest a name for a cafe about {}.",
    "Write a friendly message inviting a friend to {}.",
    "List some pros and cons of {}.",
]
TASK_SUBJECTS = [
    "the sea",
    "autumn",
    "cats",
    "coffee",
    "mountains",
    "a rainy day",
    "friendship",
    "the city at night",
    "books",
    "a picnic in the park",
    "working from home",
    "electric cars",
    "city life",
    "space travel",
    "a summer festival",
    "learning to cook",
]

TEMPLATE_GROUPS = [
    (QUESTIONS, QUESTION_SUBJECTS),
    (HOW_TOS, HOW_TO_TASKS),
    (EXPLANATIONS, EXPLANATION_SUBJECTS),
    (TASKS, TASK_SUBJECTS),
]


@dataclass(frozen=True)
class PromptSplit:
    train: list[str]
    held_out: list[str]
    dev: list[str]


def all_prompts() -> list[str]:
    """Every template filled with every subject of its group, in a fixed order."""
    prompts = []
    for templates, subjects in TEMPLATE_GROUPS:
        for subject in subjects:
            for template in templates:
                prompts.append(template.format(subject))
    return prompts


def split_prompts(
    seed: int, *, held_out_fraction: float = 0.15, limit: int | None = None, dev: int = 0
) -> PromptSplit:
    """A seeded shuffle cut into disjoint train, dev and held-out prompt lists.

    `limit` keeps the first prompts of the shuffle (for quick runs); the split is taken first,
    so the held-out list of a limited run is a prefix of the full run's. The last `dev` train
    prompts become the dev list, so the remaining train prompts keep their places (and the
    recipe's per-prompt seeds their samples) whatever `dev` is.
    """
    prompts = all_prompts()
    random.Random(seed).shuffle(prompts)
    n_held_out = max(1, round(len(prompts) * held_out_fraction))
    held_out, train = prompts[:n_held_out], prompts[n_held_out:]
    if limit is not None:
        train = train[:limit]
        held_out = held_out[: max(1, round(limit * held_out_fraction))]
    if not 0 <= dev < len(train):
        raise ValueError(f"dev must leave train prompts: {dev} of {len(train)}")
    return PromptSplit(train=train[: len(train) - dev], held_out=held_out, dev=train[len(train) - dev :])
