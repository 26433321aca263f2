"""P's storage type on the default model: decode speed in embed mode and how far the logits move.

    .venv/bin/python benchmarks/pre_layer_type.py [--tokens 128] [--repeat 3] [--eval]

The shipped pre-layer is grafted onto the default base once per type (`clm-local convert
--outtype f32|f16|bf16|q8_0`). For each file, in one run and interleaved with the plain base:
greedy decode tokens/s in embed mode at alpha 1 (one sequence: P is the only extra work), and the
KL divergence of its next-token distributions from the F32 file's over a few prompts' positions,
in both modes at alpha 0.5, 1 and 1.5 (mean over positions; the largest in brackets).
`--eval` adds what the recipe measures (`clm-local recipe tune`'s answers to its 30 dev prompts:
words, base-model perplexity, loops) per type at those alphas, with the base model's row for the
guard (perplexity and loops at most 1.5x the base's).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np

TYPES = ("f32", "f16", "bf16", "q8_0")
ALPHAS = (0.5, 1.0, 1.5)
MODES = ("logits", "embed")
PROMPTS = [
    "How do I boil an egg?",
    "Explain why the sky is blue in two sentences.",
    "Write a haiku about autumn.",
    "What is the capital of Australia, and why is it not Sydney?",
]


def log_softmax(z: np.ndarray) -> np.ndarray:
    z = z.astype(np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def kl(reference: np.ndarray, other: np.ndarray) -> np.ndarray:
    """KL(reference || other) per position."""
    p, q = log_softmax(reference), log_softmax(other)
    return (np.exp(p) * (p - q)).sum(axis=-1)


def decode_speed(path: Path, tokens: int, alpha: float | None) -> float:
    from clm_local.benchmarks.greedy import greedy_decode_speed

    import clm_local

    with clm_local.load(path, n_ctx=512, n_sequences=1) as model:
        return greedy_decode_speed(
            model, model.tokenize(PROMPTS[0]), tokens, 1.0 if alpha is None else alpha, "embed"
        )


def evaluate_types(files: dict[str, Path], *, slots: int = 8, max_tokens: int = 128) -> list:
    """The recipe's cells (mean and 95% interval per measure) of every file at ALPHAS, both modes."""
    import clm_local
    from clm_local.default_model import base_model_path
    from clm_local.recipe.answers import ClmSource, PlainSource, context_for, templated_prompts
    from clm_local.recipe.cells import BASE, System, evaluate_systems
    from clm_local.recipe.prompts import split_prompts
    from clm_local.recipe.recipe import RecipeSettings

    settings = RecipeSettings()
    dev = split_prompts(settings.seed, dev=settings.dev_prompts).dev
    prompts = templated_prompts(base_model_path(), dev)
    n_ctx = context_for(prompts, max_tokens)
    with clm_local.load(base_model_path(), n_ctx=n_ctx, n_sequences=slots) as base:
        cells, _ = evaluate_systems(
            [System(BASE, PlainSource(base), [0.0])], prompts, base, max_tokens=max_tokens
        )
        for kind, path in files.items():
            with clm_local.load(path, n_ctx=n_ctx, n_sequences=2 * slots) as model:
                systems = [System(f"{kind}/{mode}", ClmSource(model, mode), ALPHAS) for mode in MODES]
                cells += evaluate_systems(systems, prompts, base, max_tokens=max_tokens)[0]
    return cells


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument(
        "--eval", action="store_true", help="also the recipe's measures per type (dev prompts)"
    )
    args = parser.parse_args()
    from clm_local.converters.convert import ConvertOptions, convert

    import clm_local
    from clm_local.default_model import SHIPPED_PRE_LAYER, base_model_path

    base = base_model_path()
    with tempfile.TemporaryDirectory() as scratch:
        files = {}
        for kind in TYPES:
            files[kind] = Path(scratch) / f"default-{kind}.gguf"
            convert(SHIPPED_PRE_LAYER, files[kind], ConvertOptions(base=base, outtype=kind))
        speeds: dict[str, list[float]] = {name: [] for name in ("base", *TYPES)}
        for repeat in range(args.repeat):
            print(f"speed, repeat {repeat + 1}/{args.repeat}", file=sys.stderr)
            speeds["base"].append(decode_speed(base, args.tokens, None))
            for kind in TYPES:
                speeds[kind].append(decode_speed(files[kind], args.tokens, 1.0))
        divergence: dict[tuple[str, str, float], list[float]] = {}
        logits: dict[str, dict[tuple[str, float, int], np.ndarray]] = {}
        for kind in TYPES:
            logits[kind] = {}
            with clm_local.load(files[kind], n_ctx=512) as model:
                for index, prompt in enumerate(PROMPTS):
                    tokens = model.tokenize(prompt)
                    for mode in MODES:
                        for alpha in ALPHAS:
                            logits[kind][(mode, alpha, index)] = model.logits(tokens, alpha=alpha, mode=mode)
        for kind in TYPES[1:]:
            for key, reference in logits["f32"].items():
                mode, alpha, _ = key
                divergence.setdefault((kind, mode, alpha), []).extend(kl(reference, logits[kind][key]))
        sizes = {kind: files[kind].stat().st_size for kind in TYPES}
        eval_cells = evaluate_types(files) if args.eval else []

    base_speed = statistics.median(speeds["base"])
    print("| P stored as | file MiB | embed decode tok/s | x base |", end="")
    print("".join(f" KL {mode} a={alpha:g} |" for mode in MODES for alpha in ALPHAS))
    print("|---|---:|---:|---:|" + "---:|" * (2 * len(ALPHAS)))
    print(f"| (base, no P) | | {base_speed:.1f} | 1.00 |" + " |" * (2 * len(ALPHAS)))
    for kind in TYPES:
        speed = statistics.median(speeds[kind])
        cells = ""
        for mode in MODES:
            for alpha in ALPHAS:
                if kind == "f32":
                    cells += " 0 |"
                    continue
                values = divergence[(kind, mode, alpha)]
                cells += f" {np.mean(values):.1e} ({max(values):.1e}) |"
        print(f"| {kind} | {sizes[kind] / 2**20:.1f} | {speed:.1f} | {speed / base_speed:.3f} |{cells}")

    if eval_cells:
        from clm_local.recipe.cells import format_table

        print()
        print(format_table(eval_cells))


if __name__ == "__main__":
    main()
