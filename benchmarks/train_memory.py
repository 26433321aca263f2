"""Peak memory and seconds per pair of DPO training at real model shapes, with and without the
memory savers, fp32 against a bf16 base.

    .venv/bin/python benchmarks/train_memory.py [--shapes qwen2.5-0.5b llama-3.2-1b] [--steps 2]

The models are random weights in the exact shapes of Qwen2.5-0.5B and Llama-3.2-1B, made from a
transformers config (no download: speed and memory depend only on the shape) and kept in `--work`
for the next run. The data is DPO pairs of a 256-token prompt and 256-token answers (512 tokens a
sequence; a byte-level tokenizer without merges makes every letter one token), batch 1. Each
configuration runs in its own process, one after the other: peak memory is the process's peak
resident set size during `Trainer.run()` (reference pass and training; on Linux the peak is reset
after loading) and, apart, after loading. Seconds per pair exclude the first step. On a GPU,
peak memory is torch's peak allocation.
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

SHAPES = {
    # config.json of Qwen/Qwen2.5-0.5B (494M parameters, tied embeddings)
    "qwen2.5-0.5b": dict(
        model_type="qwen2",
        hidden_size=896,
        intermediate_size=4864,
        num_hidden_layers=24,
        num_attention_heads=14,
        num_key_value_heads=2,
        vocab_size=151936,
        max_position_embeddings=32768,
        rms_norm_eps=1e-6,
        tie_word_embeddings=True,
    ),
    # config.json of meta-llama/Llama-3.2-1B (1.24B parameters, tied embeddings; rope scaling left out)
    "llama-3.2-1b": dict(
        model_type="llama",
        hidden_size=2048,
        intermediate_size=8192,
        num_hidden_layers=16,
        num_attention_heads=32,
        num_key_value_heads=8,
        head_dim=64,
        vocab_size=128256,
        max_position_embeddings=131072,
        rms_norm_eps=1e-5,
        tie_word_embeddings=True,
    ),
}
# (name, --dtype, gradient checkpointing, log-prob chunk tokens: None = auto, 0 = none)
CONFIGURATIONS = (
    ("fp32 plain", "fp32", False, 0),
    ("fp32 saving", "fp32", True, None),
    ("bf16 plain", "bf16", False, 0),
    ("bf16 saving", "bf16", True, None),
)
PROMPT_TOKENS = ANSWER_TOKENS = 256
LETTERS = "abcdefghijklmnopqrstuvwxyz"


def make_model(shape: str, directory: Path) -> Path:
    """A random-weight model folder of `shape` with a word-level tokenizer (kept for later runs)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedTokenizerFast

    if (directory / "config.json").is_file():
        return directory
    settings = dict(SHAPES[shape])
    config = AutoConfig.for_model(settings.pop("model_type"), **settings)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    # Byte-level BPE with no merges: one token per byte, whichever tokenizer class transformers
    # picks for the model type when it loads the folder.
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocabulary = {token: index for index, token in enumerate(["<pad>", "<eos>", *alphabet])}
    backend = Tokenizer(models.BPE(vocab=vocabulary, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", eos_token="<eos>")
    partial = Path(tempfile.mkdtemp(dir=directory.parent, prefix=f".{shape}-"))  # renamed when complete
    model.save_pretrained(partial)
    tokenizer.save_pretrained(partial)
    partial.rename(directory)
    return directory


def write_pairs(path: Path, count: int) -> None:
    """`count` pairs: a 256-letter prompt and 255-letter answers (+ EOS: 256 tokens)."""
    rng = random.Random(0)

    def text(letters: int) -> str:
        return "".join(rng.choice(LETTERS) for _ in range(letters))

    with path.open("w") as handle:
        for _ in range(count):
            record = {"prompt": text(PROMPT_TOKENS), "chosen": text(ANSWER_TOKENS - 1)}
            record["rejected"] = text(ANSWER_TOKENS - 1)
            handle.write(json.dumps(record) + "\n")


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak RSS (VmHWM) of this process; False where that is not possible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _peak_rss_gib(reset: bool) -> float:
    if reset:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def worker(args: argparse.Namespace) -> None:
    """One configuration, in this process; prints one JSON line."""
    from clm_local.training import Trainer, TrainOptions
    from clm_local.training.checkpoint import METRICS_FILE

    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        write_pairs(scratch / "pairs.jsonl", args.steps)
        options = TrainOptions(
            max_steps=args.steps,
            batch_size=1,
            max_length=PROMPT_TOKENS + ANSWER_TOKENS,
            max_prompt_length=PROMPT_TOKENS,
            device=args.device,
            dtype=args.dtype,
            gradient_checkpointing=args.checkpointing == "on",
            logprob_chunk_tokens=None if args.chunk == "auto" else int(args.chunk),
            save_every=args.steps,
            progress=False,
        )
        started = time.perf_counter()
        trainer = Trainer(args.base, scratch / "pairs.jsonl", scratch / "ckpt", options)
        loaded = time.perf_counter()
        load_peak = _peak_rss_gib(reset=False)
        reset = _reset_peak_rss()
        if trainer.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(trainer.device)
        trainer.run()
        records = [json.loads(line) for line in (scratch / "ckpt" / METRICS_FILE).read_text().splitlines()]
    steps = [r for r in records if r["split"] == "train"]
    example = trainer.datasets["train"].examples[0]
    gpu = trainer.device.type == "cuda"
    result = {
        "tokens_per_sequence": len(example.prompt) + len(example.responses[0]),
        "parameters_m": round(sum(p.numel() for p in trainer.model.parameters()) / 1e6),
        "load_s": round(loaded - started, 1),
        "peak_load_gib": round(load_peak, 2),
        "peak_train_gib": round(
            torch.cuda.max_memory_allocated(trainer.device) / 2**30 if gpu else _peak_rss_gib(reset), 2
        ),
        "s_per_pair": round((steps[-1]["elapsed_s"] - steps[0]["elapsed_s"]) / (len(steps) - 1), 1),
        "first_step_s": steps[0]["elapsed_s"],
        "checkpointing": trainer.checkpointing,
        "chunk_tokens": trainer.chunk_tokens,
        "threads": torch.get_num_threads(),
    }
    print(json.dumps(result))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    parser.add_argument("--configurations", nargs="+", default=[c[0] for c in CONFIGURATIONS])
    parser.add_argument("--steps", type=int, default=2, help="optimizer steps (pairs) per configuration")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--work", type=Path, default=Path.home() / ".cache/clm-local/bench-models")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--base", help=argparse.SUPPRESS)
    parser.add_argument("--dtype", help=argparse.SUPPRESS)
    parser.add_argument("--checkpointing", help=argparse.SUPPRESS)
    parser.add_argument("--chunk", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.steps < 2:
        sys.exit("--steps must be at least 2 (the first step is not timed)")
    if args.worker:
        worker(args)
        return

    args.work.mkdir(parents=True, exist_ok=True)
    rows = []
    for shape in args.shapes:
        base = args.work / shape
        if not (base / "config.json").is_file():  # in its own process too: the parent stays small
            print(f"making the random {shape} model in {base} ...", file=sys.stderr)
            code = f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); "
            code += "import train_memory as t; from pathlib import Path; "
            code += f"t.make_model({shape!r}, Path({str(base)!r}))"
            subprocess.run([sys.executable, "-c", code], check=True)
        for name, dtype, checkpointing, chunk in CONFIGURATIONS:
            if name not in args.configurations:
                continue
            command = [sys.executable, __file__, "--worker", "--base", str(base), "--dtype", dtype]
            command += ["--checkpointing", "on" if checkpointing else "off"]
            command += ["--chunk", "auto" if chunk is None else str(chunk), "--steps", str(args.steps)]
            command += ["--device", args.device]
            print(f"{shape}, {name} ...", file=sys.stderr)
            done = subprocess.run(command, capture_output=True, text=True)
            if done.returncode != 0:
                tail = done.stderr.strip().splitlines()[-1:] or ["(no output)"]
                row = {"shape": shape, "configuration": name, "error": tail[0]}
            else:
                row = {"shape": shape, "configuration": name} | json.loads(
                    done.stdout.strip().splitlines()[-1]
                )
            print(json.dumps(row), flush=True)
            rows.append(row)

    print(
        "\n| shape | base dtype | checkpointing + chunked log-probs | peak train GiB | peak load GiB ", end=""
    )
    print("| s/pair |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        dtype, saving = row["configuration"].split()
        if "error" in row:
            print(f"| {row['shape']} | {dtype} | {saving == 'saving'} | failed: {row['error']} | | |")
            continue
        print(
            f"| {row['shape']} | {dtype} | {'on' if saving == 'saving' else 'off'} | {row['peak_train_gib']} "
            f"| {row['peak_load_gib']} | {row['s_per_pair']} |"
        )


if __name__ == "__main__":
    main()
