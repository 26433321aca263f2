"""DPO training throughput of the CLM pre-layer: preference pairs per minute and peak memory.

    .venv/bin/python benchmarks/train_throughput.py [BASE] [--steps 20 --batch-size 4 --max-length 256]

BASE defaults to the SmolLM2-135M-Instruct GGUF in ~/.cache/clm-local/models. Without `--data`, a
synthetic preference set is generated (prompts of about `--prompt-words` words, responses of about
`--response-words`), so the figure measures the training machinery, not the data. The throughput
excludes the first step (warm-up) and the one-off reference pass, which is reported on its own
(with the final checkpoint save, which is small). Peak memory is reported for loading and for
training; on the CPU the second is the process peak so far, so it is at least the first.
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import sys
import tempfile
import time
from pathlib import Path

import torch

from clm_local.training import Trainer, TrainOptions
from clm_local.training.checkpoint import METRICS_FILE

DEFAULT_BASE = Path.home() / ".cache/clm-local/models/SmolLM2-135M-Instruct.Q4_1.gguf"
WORDS = (
    "the model answers a question about cats dogs weather music history science code travel food "
    "kindly clearly briefly politely rudely wrongly because therefore however also very quite"
).split()


def synthetic_pairs(path: Path, count: int, prompt_words: int, response_words: int, seed: int) -> None:
    """Write `count` preference pairs of random words: chosen polite, rejected curt."""
    rng = random.Random(seed)

    def text(words: int) -> str:
        return " ".join(rng.choice(WORDS) for _ in range(words))

    with path.open("w") as handle:
        for _ in range(count):
            record = {
                "prompt": text(prompt_words) + "?",
                "chosen": "Certainly, " + text(response_words) + ".",
                "rejected": "No. " + text(response_words) + ".",
            }
            handle.write(json.dumps(record) + "\n")


def peak_memory_gib(device: torch.device) -> float:
    """Peak CUDA memory allocated by torch since the last reset, MPS memory in use now, or on the
    CPU the process's peak resident size so far (which cannot be reset, so it includes loading)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    if device.type == "mps":
        return torch.mps.driver_allocated_memory() / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux reports KiB


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("base", nargs="?", default=str(DEFAULT_BASE), help="HF model folder or GGUF file")
    parser.add_argument("--data", help="preference JSONL (default: synthetic pairs)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--grad-accum", type=int, default=1)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--prompt-words", type=int, default=60)
    parser.add_argument("--response-words", type=int, default=120)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto")
    args = parser.parse_args()
    if not Path(args.base).exists():
        sys.exit(f"base model {args.base} not found (pass one as the first argument)")

    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        data = Path(args.data) if args.data else scratch / "pairs.jsonl"
        pairs_per_step = args.batch_size * args.grad_accum
        if not args.data:
            synthetic_pairs(data, args.steps * pairs_per_step, args.prompt_words, args.response_words, seed=0)
        options = TrainOptions(
            max_steps=args.steps,
            batch_size=args.batch_size,
            grad_accum=args.grad_accum,
            max_length=args.max_length,
            device=args.device,
            dtype=args.dtype,
            save_every=args.steps,
            progress=False,
        )
        started = time.perf_counter()
        trainer = Trainer(args.base, data, scratch / "ckpt", options)
        loaded = time.perf_counter()
        load_memory = peak_memory_gib(trainer.device)
        if trainer.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(trainer.device)
        trainer.run()
        finished = time.perf_counter()
        records = [json.loads(line) for line in (scratch / "ckpt" / METRICS_FILE).read_text().splitlines()]

    steps = [r for r in records if r["split"] == "train"]
    steady_s = steps[-1]["elapsed_s"] - steps[0]["elapsed_s"]
    lengths = [len(e.prompt) + max(map(len, e.responses)) for e in trainer.datasets["train"].examples]
    result = {
        "base": args.base,
        "device": str(trainer.device),
        "device_name": torch.cuda.get_device_name(trainer.device) if trainer.device.type == "cuda" else "cpu",
        "dtype": str(trainer.dtype).removeprefix("torch."),
        "threads": torch.get_num_threads(),
        "batch_size": args.batch_size,
        "grad_accum": args.grad_accum,
        "mean_tokens_per_sequence": round(sum(lengths) / len(lengths), 1),
        "steps": len(steps),
        "load_s": round(loaded - started, 2),
        "reference_pass_s": round(finished - loaded - steps[-1]["elapsed_s"], 2),
        "pairs_per_minute": round((len(steps) - 1) * pairs_per_step / steady_s * 60, 1),
        "peak_memory_load_gib": round(load_memory, 2),
        "peak_memory_train_gib": round(peak_memory_gib(trainer.device), 2),
        "final_loss": round(steps[-1]["loss"], 4),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
