"""What the dial costs on bases of 1B and 3B parameters: random weights in their exact shapes.

    .venv/bin/python -m clm_local.benchmarks.large_shapes --size 1b --work DIR [--step all]

Decode speed does not depend on the weights' values, only on their shapes and storage types, so
a model of random weights in the shape of Llama-3.2-1B or -3B, quantized the way a user's file
is, prices the dial as the real model would without fetching it. Steps (`--step`, default all):

- `build`: an F16 GGUF of random weights in the size's shape (its own vocabulary size: the
  tied head is a large share of a token's work), written one tensor at a time; llama.cpp's own
  quantizer turns it into `--base-type` (Q4_K_M); a random P of block 0's shape (F32, the
  format `clm-local convert` gives a trained P by default; `--pre-layer-type` for another) is
  grafted on as `clm-local convert` grafts a checkpoint. The Llama 3 tokenizer is not available
  offline: the vocabulary is SmolLM2's BPE tokens and merges (the default model's), padded with
  unused tokens to the size's 128,256, so the embedding and the head have the real size.
  Built files go to `--models` (default: the cache's `bench-models/`), never the repository.
- `bench`: `clm-local bench` on the CLM file (base, embed, logits, two_model, interleaved),
  saved as `bench-<label>.json` in `--work`.
- `rows`: the decode step of the plain base with 1, 2 and 4 sequences (one token each, one
  ubatch), with llama.cpp's weight repacking on and off (`use_extra_bufts`, llama-cli's
  `--no-repack`), next to the machine's memory bandwidth (numpy): whether a second row costs a
  second pass over the weights (compute-bound) or rides on the first (memory-bound). Saved as
  `rows-<label>.json`.
- `spin` (not in `all`): decode steps of `--rows` sequences for `--seconds`, for a profiler:
  `perf record -e cpu-clock -D 20000 -- .venv/bin/python -m clm_local.benchmarks.large_shapes
  --size 1b --work DIR --step spin --rows 2`.
- `report` (not in `all`): the `bench-*.json` and `rows-*.json` of `--work` as one Markdown
  table and, with `--json-out`, one JSON file.

`--size 135m` is the default model itself (SmolLM2-135M, Q4_1, the shipped F32 P): nothing is
built, so its row is measured with the same flags as the others.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import gguf
import numpy as np
from clm_local.benchmarks.machine import load_average
from gguf import GGMLQuantizationType, GGUFValueType

from clm_local.errors import ClmError
from clm_local.files import cache_dir, sha256_file, write_json

INIT_STD = 0.02  # Llama's initializer_range: activations stay finite through every block
SEED = 0
CHUNK = 1 << 24  # random values drawn per call: the F32 draft of a chunk is 64 MiB at most
PAD_TOKEN_TYPE = 5  # llama.cpp's LLAMA_TOKEN_TYPE_UNUSED: not special, never parsed from text
BASE_TYPES = ("Q4_K_M", "Q4_0", "Q8_0")
PRE_LAYER_TYPES = ("auto", "f32", "f16", "bf16", "q8_0")
ROWS = (1, 2, 4)


@dataclass(frozen=True)
class Shape:
    """A base model's shape, from its config.json."""

    name: str
    n_embd: int
    n_blocks: int
    n_ff: int
    n_head: int
    n_head_kv: int
    head_dim: int
    n_vocab: int
    n_ctx: int = 131072
    rms_eps: float = 1e-5

    @property
    def rope(self) -> dict[str, object]:
        """Llama 3.2's rope: base 500,000 and llama3 scaling (stored as the rope_freqs tensor)."""
        return {
            "rope_theta": 500000.0,
            "rope_type": "llama3",
            "factor": 32.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192,
        }


SHAPES = {
    "1b": Shape("Llama-3.2-1B", 2048, 16, 8192, 32, 8, 64, 128256),
    "3b": Shape("Llama-3.2-3B", 3072, 28, 8192, 24, 8, 128, 128256),
}
DEFAULT_SIZE = "135m"  # the default model, not built
SIZES = (DEFAULT_SIZE, *SHAPES)


# --- build -----------------------------------------------------------------------------------


def models_dir() -> Path:
    folder = cache_dir() / "bench-models"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def base_path(shape: Shape, base_type: str, models: Path) -> Path:
    return models / f"{shape.name}-shape-random.{base_type}.gguf"


def clm_path(shape: Shape, base_type: str, pre_layer_type: str, models: Path) -> Path:
    p_type = "f32" if pre_layer_type == "auto" else pre_layer_type
    return models / f"{shape.name}-shape-random.{base_type}.clm-p-{p_type}.gguf"


def random_matrix(rows: int, cols: int, seed: int, dtype: type = np.float16) -> Callable[[], np.ndarray]:
    """N(0, INIT_STD) of numpy shape (rows, cols), made when the writer asks for it, in chunks."""

    def make() -> np.ndarray:
        rng = np.random.default_rng(seed)
        out = np.empty(rows * cols, dtype=dtype)
        for start in range(0, out.size, CHUNK):
            stop = min(start + CHUNK, out.size)
            draft = rng.standard_normal(stop - start, dtype=np.float32)
            draft *= INIT_STD
            out[start:stop] = draft
        return out.reshape(rows, cols)

    return make


def block_matrices(shape: Shape) -> dict[str, tuple[int, int]]:
    """The GGUF name suffix and numpy shape (out, in) of every matrix of one block."""
    q_dim, kv_dim = shape.n_head * shape.head_dim, shape.n_head_kv * shape.head_dim
    return {
        "attn_q": (q_dim, shape.n_embd),
        "attn_k": (kv_dim, shape.n_embd),
        "attn_v": (kv_dim, shape.n_embd),
        "attn_output": (shape.n_embd, q_dim),
        "ffn_gate": (shape.n_ff, shape.n_embd),
        "ffn_up": (shape.n_ff, shape.n_embd),
        "ffn_down": (shape.n_embd, shape.n_ff),
    }


# P's tensors under the Hugging Face names a training checkpoint uses (block 0 of the base).
HF_BLOCK_NAMES = {
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}


def f16_tensors(shape: Shape) -> list:
    """Every tensor of the base in F16 (norms F32 at 1), drawn lazily, in the converter's order."""
    from clm_local.converters.gguf_io import OutputTensor
    from clm_local.converters.hf_to_gguf import _rope_factors

    def ne(numpy_shape: tuple[int, ...]) -> tuple[int, ...]:
        return tuple(reversed(numpy_shape))

    def ones(n: int) -> np.ndarray:
        return np.ones(n, dtype=np.float32)

    f16, f32 = GGMLQuantizationType.F16, GGMLQuantizationType.F32
    seed = SEED
    tensors = [_rope_factors(hf_config(shape))]
    embd = (shape.n_vocab, shape.n_embd)
    tensors.append(OutputTensor("token_embd.weight", ne(embd), f16, random_matrix(*embd, seed)))
    for block in range(shape.n_blocks):
        prefix = f"blk.{block}."
        tensors.append(OutputTensor(prefix + "attn_norm.weight", (shape.n_embd,), f32, ones(shape.n_embd)))
        for suffix, numpy_shape in block_matrices(shape).items():
            seed += 1
            if suffix == "ffn_gate":
                norm = ones(shape.n_embd)
                tensors.append(OutputTensor(prefix + "ffn_norm.weight", (shape.n_embd,), f32, norm))
            matrix = random_matrix(*numpy_shape, seed)
            tensors.append(OutputTensor(prefix + suffix + ".weight", ne(numpy_shape), f16, matrix))
    tensors.append(OutputTensor("output_norm.weight", (shape.n_embd,), f32, ones(shape.n_embd)))
    return tensors


def hf_config(shape: Shape):
    """The shape as the HF converter's config (its hyperparameter keys and rope factors are reused)."""
    from clm_local.converters.hf_to_gguf import HfConfig

    raw = {"head_dim": shape.head_dim, "tie_word_embeddings": True}
    return HfConfig(
        arch="llama",
        n_blocks=shape.n_blocks,
        n_ctx=shape.n_ctx,
        n_embd=shape.n_embd,
        n_ff=shape.n_ff,
        n_head=shape.n_head,
        n_head_kv=shape.n_head_kv,
        head_dim=shape.head_dim,
        rms_eps=shape.rms_eps,
        n_vocab=shape.n_vocab,
        tied_embeddings=True,
        rope=shape.rope,
        raw=raw,
    )


def vocabulary_entries(n_vocab: int) -> list:
    """The default model's tokenizer keys, its token list padded with unused tokens to n_vocab."""
    from clm_local.converters.gguf_io import MetadataEntry, copy_metadata

    from clm_local.default_model import base_model_path
    from clm_local.gguf.file import open_gguf

    source = copy_metadata(open_gguf(base_model_path()), replace={})
    entries = [entry for entry in source if entry.key.startswith("tokenizer.")]
    padded = []
    for entry in entries:
        if entry.key == gguf.Keys.Tokenizer.LIST:
            have = len(entry.value)
            if have > n_vocab:
                raise ClmError(f"the default model's vocabulary ({have}) is larger than {n_vocab}")
            extra = [f"<|unused_{i}|>".encode() for i in range(n_vocab - have)]
            entry = MetadataEntry(entry.key, [*entry.value, *extra], entry.type, entry.sub_type)
        elif entry.key == gguf.Keys.Tokenizer.TOKEN_TYPE:
            extra = [PAD_TOKEN_TYPE] * (n_vocab - len(entry.value))
            entry = MetadataEntry(entry.key, [*entry.value, *extra], entry.type, entry.sub_type)
        elif entry.key == gguf.Keys.Tokenizer.SCORES:
            extra = [0.0] * (n_vocab - len(entry.value))
            entry = MetadataEntry(entry.key, [*entry.value, *extra], entry.type, entry.sub_type)
        padded.append(entry)
    return padded


def write_f16(shape: Shape, out: Path) -> None:
    """The random F16 base GGUF, one tensor in memory at a time."""
    from clm_local.converters.gguf_io import MetadataEntry, entries_from_writer, write_gguf
    from clm_local.converters.hf_to_gguf import _add_hparams

    tensors = f16_tensors(shape)
    recorder = gguf.GGUFWriter(None, "llama")  # no file: collects typed key/value pairs
    recorder.add_name(f"{shape.name} shape, random weights")
    _add_hparams(recorder, hf_config(shape), tensors)
    recorder.add_quantization_version(gguf.GGML_QUANT_VERSION)
    metadata = entries_from_writer(recorder) + vocabulary_entries(shape.n_vocab)
    note = "random N(0, 0.02) weights for timing only; SmolLM2's BPE vocabulary padded to size"
    metadata.append(MetadataEntry("general.description", note, GGUFValueType.STRING))
    write_gguf(out, "llama", metadata, tensors, force=True)


def build_base(shape: Shape, base_type: str, models: Path, progress: Callable[[str], None]) -> Path:
    """The quantized random base (kept in `models`; the F16 intermediate is deleted)."""
    from clm_local.converters.quantize import convert_then_quantize

    target = base_path(shape, base_type, models)
    if target.exists():
        progress(f"{target.name}: already built")
        return target
    progress(f"writing {shape.name}'s shape in F16, then llama.cpp's quantizer to {base_type} ...")
    started = time.perf_counter()
    convert_then_quantize(lambda temp: write_f16(shape, temp), target, base_type, force=False)
    seconds = time.perf_counter() - started
    progress(f"{target.name}: {target.stat().st_size / 2**20:.0f} MiB in {seconds:.0f} s")
    return target


def write_random_pre_layer(shape: Shape, base: Path, folder: Path) -> Path:
    """A training checkpoint folder holding a random F32 P (block 0's shapes) for `base`."""
    from clm_local.converters.checkpoint_manifest import FORMAT, FORMAT_VERSION, MANIFEST_FILE, PRE_LAYER_FILE
    from safetensors.numpy import save_file

    folder.mkdir(parents=True, exist_ok=True)
    tensors = {
        "model.layers.0.input_layernorm.weight": np.ones(shape.n_embd, dtype=np.float32),
        "model.layers.0.post_attention_layernorm.weight": np.ones(shape.n_embd, dtype=np.float32),
    }
    for index, (suffix, numpy_shape) in enumerate(block_matrices(shape).items()):
        matrix = random_matrix(*numpy_shape, SEED + 10_000 + index, dtype=np.float32)()
        tensors[f"model.layers.0.{HF_BLOCK_NAMES[suffix]}.weight"] = matrix
    save_file(tensors, str(folder / PRE_LAYER_FILE))
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "architecture": "llama",
        "base_block_count": shape.n_blocks,
        "pre_layer_count": 1,
        "pre_layer_file": PRE_LAYER_FILE,
        "tensor_prefix": "model.layers.0.",
        "dtype": "fp32",
        "objective": "none (random weights for timing)",
        "base": {
            "path": str(base),
            "kind": "gguf",
            "files": [{"name": base.name, "size": base.stat().st_size, "sha256": sha256_file(base)}],
        },
    }
    write_json(folder / MANIFEST_FILE, manifest)
    return folder


def build(
    shape: Shape, base_type: str, pre_layer_type: str, models: Path, progress: Callable[[str], None]
) -> Path:
    """The CLM file: the quantized random base with a random P grafted (`clm-local convert`)."""
    from clm_local.converters.convert import ConvertOptions, convert

    base = build_base(shape, base_type, models, progress)
    target = clm_path(shape, base_type, pre_layer_type, models)
    if target.exists():
        progress(f"{target.name}: already built")
        return target
    progress(f"grafting a random P ({pre_layer_type}) onto {base.name} ...")
    with tempfile.TemporaryDirectory(prefix="random-p-", dir=models) as folder:
        checkpoint = write_random_pre_layer(shape, base, Path(folder) / "checkpoint")
        name = f"{shape.name} shape, random weights + random P"
        convert(checkpoint, target, ConvertOptions(outtype=pre_layer_type, base=base, name=name))
    return target


# --- bench -----------------------------------------------------------------------------------


def model_files(args: argparse.Namespace, progress: Callable[[str], None]) -> tuple[Path, Path]:
    """(CLM file, plain base file) of the size, built where needed."""
    if args.size == DEFAULT_SIZE:
        from clm_local import default_model

        return default_model.default_model_path(), default_model.base_model_path()
    shape = SHAPES[args.size]
    clm = build(shape, args.base_type, args.pre_layer_type, args.models, progress)
    return clm, base_path(shape, args.base_type, args.models)


def label(args: argparse.Namespace) -> str:
    if args.size == DEFAULT_SIZE:
        return DEFAULT_SIZE
    p_type = "f32" if args.pre_layer_type == "auto" else args.pre_layer_type
    return f"{args.size}-{args.base_type}-p{p_type}"


def run_bench(args: argparse.Namespace, clm: Path, progress: Callable[[str], None]) -> dict:
    from clm_local.benchmarks.report import format_markdown
    from clm_local.benchmarks.settings import BenchSettings
    from clm_local.benchmarks.suite import run_benchmark

    settings = BenchSettings(
        prompt_tokens=args.prompt_tokens,
        gen_tokens=args.gen_tokens,
        threads=args.threads,
        repeat=args.repeat,
        n_ctx=args.ctx,
        alpha=args.alpha,
    )
    result = run_benchmark(clm, settings, progress=progress)
    result["size"] = args.size
    result["model_file_mib"] = clm.stat().st_size / 2**20
    save(args.work / f"bench-{label(args)}.json", result)
    print(format_markdown(result))
    return result


# --- rows: the decode step with 1, 2 and 4 sequences -------------------------------------------


class RowTimer:
    """A plain GGUF with room for len(ROWS) sequences, for timing one decode step of k rows."""

    def __init__(self, path: Path, *, repack: bool, threads: int, n_ctx: int, prompt: int) -> None:
        from clm_local.runtime.model import ClmModel

        self.n_seq = max(ROWS)
        self.model = ClmModel(
            path, n_ctx=n_ctx, n_threads=threads, n_gpu_layers=0, n_sequences=self.n_seq, repack=repack
        )
        rng = np.random.default_rng(SEED)
        for seq in range(self.n_seq):  # every sequence holds a prompt, as in a conversation
            tokens = [int(t) for t in rng.integers(0, min(self.model.n_vocab, 32000), prompt)]
            self.model.decode({seq: tokens}, check=False)

    def step_seconds(self, rows: int, steps: int) -> tuple[float, float]:
        """(wall, CPU) seconds of one decode step that appends a token to each of `rows` sequences,
        the mean over `steps`. CPU time is the process's, every thread's: on a shared machine it
        does not count the time other programs hold the cores (with one thread, llama.cpp computes
        in this thread and spins nowhere, so it is the step's own work)."""
        before = self.model.forward_passes
        started, cpu_started = time.perf_counter(), time.process_time()
        for step in range(steps):
            self.model.decode({seq: [(step * 7 + seq) % 1000 + 100] for seq in range(rows)}, check=False)
        elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu_started
        passes = self.model.forward_passes - before
        if passes != steps:
            raise ClmError(f"{rows} rows took {passes} forward passes for {steps} steps: not one batch")
        return elapsed / steps, cpu / steps

    def positions_left(self) -> int:
        """Positions still free in the fullest sequence."""
        return self.model.n_ctx - max(self.model.next_position(seq) for seq in range(self.n_seq))

    def close(self) -> None:
        self.model.close()


def memory_bandwidth(threads: int, mib: int = 1024, repeat: int = 7) -> dict[str, float]:
    """GB/s, best of `repeat` on `mib` MiB arrays: a read-only pass (the max of float32s, a
    vectorized loop that waits on memory) on 1 and on `threads` threads (numpy releases the GIL
    in its loops), and a copy (read + write, one thread). On a shared machine the one-thread
    read is also given per second of this thread's CPU time."""
    a = np.ones(mib * 2**20 // 4, dtype=np.float32)
    b = np.empty_like(a)

    def best(run: Callable[[], None]) -> float:
        fastest = float("inf")
        for _ in range(repeat):
            started = time.perf_counter()
            run()
            fastest = min(fastest, time.perf_counter() - started)
        return fastest

    def read_in_threads(count: int) -> None:
        workers = [threading.Thread(target=np.max, args=(part,)) for part in np.array_split(a, count)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()

    def cpu_seconds_of_one_read() -> float:  # not counting the time other programs hold the core
        started = time.thread_time()
        np.max(a)
        return time.thread_time() - started

    return {
        "read_gbps_1_thread_cpu_time": a.nbytes / min(cpu_seconds_of_one_read() for _ in range(repeat)) / 1e9,
        "read_gbps_1_thread": a.nbytes / best(lambda: read_in_threads(1)) / 1e9,
        f"read_gbps_{threads}_threads": a.nbytes / best(lambda: read_in_threads(threads)) / 1e9,
        "copy_gbps_1_thread": 2 * a.nbytes / best(lambda: np.copyto(b, a)) / 1e9,
    }


def weight_bytes(path: Path) -> dict[str, int]:
    """Bytes of the matrices a decode step reads, by type (the tied head is token_embd)."""
    from clm_local.gguf.file import open_gguf

    by_type: dict[str, int] = {}
    for tensor in open_gguf(path).tensors:
        if len(tensor.shape) >= 2:
            by_type[tensor.tensor_type.name] = by_type.get(tensor.tensor_type.name, 0) + int(tensor.n_bytes)
    return by_type


def run_rows(args: argparse.Namespace, base: Path, progress: Callable[[str], None]) -> dict:
    """Step time with 1, 2, 4 rows, repacking on and off, interleaved over `--repeat` rounds.

    On a shared machine other programs only ever add time, so next to the median the fastest
    round (min) is the better estimate of the step's own cost; CPU time is given too."""
    progress("memory bandwidth (numpy) ...")
    bandwidth = memory_bandwidth(args.threads)
    progress(f"  {bandwidth}")
    timers = {}
    for repack in (True, False):
        progress(f"loading {base.name} (repack {'on' if repack else 'off'}) ...")
        timers[repack] = RowTimer(base, repack=repack, threads=args.threads, n_ctx=1024, prompt=64)
    seconds: dict[tuple[bool, int], list[tuple[float, float]]] = {(r, k): [] for r in timers for k in ROWS}
    try:
        for timer in timers.values():  # warm-up: fault the weights and buffers in
            for rows in ROWS:
                timer.step_seconds(rows, 2)
        for round_ in range(args.repeat):
            for repack, timer in timers.items():
                for rows in ROWS:
                    seconds[(repack, rows)].append(timer.step_seconds(rows, args.row_steps))
            progress(f"round {round_ + 1}/{args.repeat} done, load average {load_average()[0]:.1f}")
    finally:
        for timer in timers.values():
            timer.close()
    by_type = weight_bytes(base)
    total_bytes = sum(by_type.values())
    result: dict[str, object] = {
        "size": args.size,
        "model": base.name,
        "threads": args.threads,
        "rounds": args.repeat,
        "steps_per_round": args.row_steps,
        "weight_bytes_by_type": by_type,
        "weight_bytes": total_bytes,
        "bandwidth": bandwidth,
        "load_average_after": load_average(),
        "steps": {},
    }
    for repack in timers:
        walls = {rows: [wall for wall, _ in seconds[(repack, rows)]] for rows in ROWS}
        cpus = {rows: [cpu for _, cpu in seconds[(repack, rows)]] for rows in ROWS}
        entry = {}
        for rows in ROWS:
            entry[str(rows)] = {
                "step_ms_median": 1000 * statistics.median(walls[rows]),
                "step_ms_min": 1000 * min(walls[rows]),
                "step_ms_max": 1000 * max(walls[rows]),
                "cpu_ms_median": 1000 * statistics.median(cpus[rows]),
                "x_one_row_min": min(walls[rows]) / min(walls[1]),
                "x_one_row_median": statistics.median(walls[rows]) / statistics.median(walls[1]),
                "x_one_row_cpu": statistics.median(cpus[rows]) / statistics.median(cpus[1]),
                # what a step's weight reads come to if every weight is read once from memory
                "weight_gbps_min_step": total_bytes / min(walls[rows]) / 1e9,
            }
        result["steps"]["repack_on" if repack else "repack_off"] = entry
    save(args.work / f"rows-{label(args)}-t{args.threads}.json", result)
    print(json.dumps(result, indent=2))
    return result


def run_spin(args: argparse.Namespace, base: Path, progress: Callable[[str], None]) -> None:
    """Decode steps of --rows rows for --seconds, for a profiler attached to this process."""
    timer = RowTimer(base, repack=not args.no_repack, threads=args.threads, n_ctx=4096, prompt=64)
    try:
        timer.step_seconds(args.rows, 2)
        progress(f"spinning: {args.rows} rows a step for {args.seconds} s (pid {os.getpid()})")
        deadline, steps = time.perf_counter() + args.seconds, 0
        while time.perf_counter() < deadline and timer.positions_left() > 16:
            timer.step_seconds(args.rows, 8)
            steps += 8
        progress(f"{steps} steps")
    finally:
        timer.close()


# --- report ----------------------------------------------------------------------------------


def run_report(args: argparse.Namespace) -> dict:
    """One table from the `bench-*.json` and `rows-*.json` in --work, sizes in order."""
    benches = {p.stem.removeprefix("bench-"): load(p) for p in sorted(args.work.glob("bench-*.json"))}
    rows = {p.stem.removeprefix("rows-"): load(p) for p in sorted(args.work.glob("rows-*.json"))}
    order = {size: i for i, size in enumerate(SIZES)}
    labels = sorted(benches, key=lambda name: (order.get(benches[name]["size"], 99), name))
    lines = [
        "| model | file MiB | base decode tok/s | embed x base | logits x base | two models x base "
        "| logits / two models | peak RSS MiB base | embed | logits | two models | KV MiB base / logits |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    table = []
    for name in labels:
        configs = benches[name]["configs"]
        ratio = {c: configs[c]["vs_base"]["decode_tps"] for c in configs}
        rss = {c: configs[c]["vs_base"]["peak_rss_mb"] for c in configs}
        row = {
            "label": name,
            "file_mib": benches[name].get("model_file_mib"),
            "base_decode_tps": configs["base"]["decode_tps"],
            "decode_x_base": ratio,
            "prefill_x_base": {c: configs[c]["vs_base"]["prefill_tps"] for c in configs},
            "peak_rss_mb": {c: configs[c]["peak_rss_mb"] for c in configs},
            "peak_rss_x_base": rss,
            "kv_cache_mb": {c: configs[c]["kv_cache_mb"] for c in configs},
        }
        table.append(row)
        file_mib = f"{row['file_mib']:.0f}" if row["file_mib"] else ""
        kv = f"{configs['base']['kv_cache_mb']:.0f} / {configs['logits']['kv_cache_mb']:.0f}"
        lines.append(
            f"| {name} | {file_mib} | {row['base_decode_tps']:.1f} | {ratio['embed']:.2f} "
            f"| {ratio['logits']:.2f} | {ratio['two_model']:.2f} "
            f"| {ratio['logits'] / ratio['two_model']:.2f} "
            f"| {configs['base']['peak_rss_mb']:.0f} | {rss['embed']:.2f} | {rss['logits']:.2f} "
            f"| {rss['two_model']:.2f} | {kv} |"
        )
    lines += [
        "",
        "| model | threads | repack | 1 row ms (fastest round) | 2 rows x 1 row | 4 rows x 1 row "
        "| 2 rows x 1 row, CPU time | GB/s if a 1-row step reads every weight once |",
        "|---|---:|---|---:|---:|---:|---:|---:|",
    ]
    for name, result in rows.items():
        for mode, steps in result["steps"].items():
            one, two, four = steps["1"], steps["2"], steps["4"]
            lines.append(
                f"| {name} | {result['threads']} | {mode.removeprefix('repack_')} | {one['step_ms_min']:.1f} "
                f"| {two['x_one_row_min']:.2f} | {four['x_one_row_min']:.2f} | {two['x_one_row_cpu']:.2f} "
                f"| {one['weight_gbps_min_step']:.1f} |"
            )
    print("\n".join(lines))
    report = {"bench": table, "rows": rows, "runs": benches}
    if args.json_out:
        save(args.json_out, report)
    return report


# --- the command line ------------------------------------------------------------------------


def save(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, data)


def load(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=SIZES, default="1b")
    parser.add_argument("--work", type=Path, required=True, help="Folder for the JSON results.")
    parser.add_argument("--step", choices=("all", "build", "bench", "rows", "spin", "report"), default="all")
    parser.add_argument("--models", type=Path, default=None, help="Folder of the built GGUFs.")
    parser.add_argument("--base-type", choices=BASE_TYPES, default="Q4_K_M")
    parser.add_argument("--pre-layer-type", choices=PRE_LAYER_TYPES, default="auto")
    parser.add_argument("--prompt-tokens", type=int, default=128)
    parser.add_argument("--gen-tokens", type=int, default=32)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--ctx", type=int, default=4096)
    parser.add_argument("--alpha", type=float, default=0.8)
    parser.add_argument("--row-steps", type=int, default=8, help="rows: decode steps timed per round.")
    parser.add_argument("--rows", type=int, choices=ROWS, default=2, help="spin: sequences a step.")
    parser.add_argument("--seconds", type=float, default=30.0, help="spin: how long.")
    parser.add_argument("--no-repack", action="store_true", help="spin: llama.cpp's repacking off.")
    parser.add_argument("--json-out", type=Path, default=None, help="report: write the JSON here.")
    args = parser.parse_args(argv)
    args.models = args.models or models_dir()
    args.models.mkdir(parents=True, exist_ok=True)
    args.work.mkdir(parents=True, exist_ok=True)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)

    def progress(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    try:
        if args.step == "report":
            run_report(args)
            return 0
        clm, base = model_files(args, progress)
        if args.step in ("all", "bench"):
            run_bench(args, clm, progress)
        if args.step in ("all", "rows"):
            run_rows(args, base, progress)
        if args.step == "spin":
            run_spin(args, base, progress)
    except ClmError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
