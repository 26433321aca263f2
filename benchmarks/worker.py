"""One benchmark configuration, timed in a process of its own (`python -m clm_local.benchmarks.worker`).

A fresh interpreter per configuration and repeat makes the peak RSS (the process's high-water
mark) belong to that configuration alone: no model, KV cache or allocator arena of another one
is still mapped. The timed part is chat's own generation loop (Decoder.generate, greedy), after
an untimed warm-up on the same prompt that faults the memory-mapped weights and the compute
buffers in, so that neither loading nor first touches of memory count as prefill.

The run prints one JSON object on stdout: prefill_tps, decode_tps, peak_rss_mb, startup_rss_mb
(the process before any model is loaded) and kv_cache_mb.
"""

from __future__ import annotations

import json
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import asdict, dataclass
from pathlib import Path

import gguf
from clm_local.benchmarks.plain_files import BenchFiles
from clm_local.benchmarks.settings import BenchSettings
from clm_local.benchmarks.two_model import TwoModelDecoder

from clm_local.chat.generation import Decoder
from clm_local.chat.sampling import SamplingParams
from clm_local.errors import ClmError
from clm_local.gguf.file import field_value, open_gguf
from clm_local.runtime.model import ClmModel, load

CONFIGS = ("base", "embed", "logits", "two_model")
GREEDY = SamplingParams(temp=0.0)
MIB = 1024 * 1024
KV_BYTES_PER_VALUE = 2  # llama.cpp's default KV cache type is f16
# Any text will do: only the number of tokens matters for the timing.
PROMPT_TEXT = (
    "A lighthouse keeper writes down the weather every hour: the wind, the height of the waves, "
    "the colour of the sky at dawn and the ships that pass before the fog comes in. "
)

# The configurations that run one model: (file, sequences in its context, mode).
# None sequences: the model's own choice (two for a CLM file); None mode: a plain model's.
_ONE_MODEL = {
    "base": ("base", 1, None),
    "embed": ("clm", 1, "embed"),
    "logits": ("clm", None, "logits"),
}


@dataclass(frozen=True)
class RunSpec:
    """Everything one run needs, passed to the worker process as JSON."""

    config: str
    clm: str
    base: str
    aligned: str
    prompt_tokens: int
    gen_tokens: int
    threads: int
    n_ctx: int
    alpha: float
    rpc: tuple[str, ...] = ()

    @classmethod
    def for_run(
        cls, config: str, files: BenchFiles, settings: BenchSettings, rpc: Sequence[str] | None = None
    ) -> RunSpec:
        """The spec of one run of `config` on `files` with the bench's settings (and its rpc-servers
        unless `rpc` names others)."""
        return cls(
            config=config,
            clm=str(files.clm),
            base=str(files.base),
            aligned=str(files.aligned),
            prompt_tokens=settings.prompt_tokens,
            gen_tokens=settings.gen_tokens,
            threads=settings.threads,
            n_ctx=settings.n_ctx,
            alpha=settings.alpha,
            rpc=tuple(settings.rpc if rpc is None else rpc),
        )

    @property
    def files(self) -> BenchFiles:
        return BenchFiles(clm=Path(self.clm), base=Path(self.base), aligned=Path(self.aligned))

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> RunSpec:
        return cls(**json.loads(text))


@dataclass(frozen=True)
class Setup:
    """The loaded models of one configuration and how to start a generation on them."""

    models: tuple[ClmModel, ...]
    new_decoder: Callable[[], Decoder]  # a fresh Decoder empties the KV caches
    mode: str | None


def open_config(spec: RunSpec, stack: ExitStack) -> Setup:
    """Load the configuration's models as chat would, closed when `stack` closes."""

    def open_model(path: Path, n_sequences: int | None = None) -> ClmModel:
        model = load(
            path, n_ctx=spec.n_ctx, n_threads=spec.threads, n_sequences=n_sequences, rpc=list(spec.rpc)
        )
        return stack.enter_context(model)

    files = spec.files
    if spec.config == "two_model":
        aligned, base = open_model(files.aligned), open_model(files.base)
        return Setup((aligned, base), lambda: TwoModelDecoder(aligned, base), None)
    file, n_sequences, mode = _ONE_MODEL[spec.config]
    model = open_model(getattr(files, file), n_sequences)
    return Setup((model,), lambda: Decoder(model), mode)


def synthetic_prompt(model: ClmModel, n_tokens: int) -> list[int]:
    """A fixed prompt of exactly n_tokens: PROMPT_TEXT repeated, tokenized, cut."""
    once = len(model.tokenize(PROMPT_TEXT, add_special=False))
    if once == 0:
        raise ClmError(f"{model.info.path}: its vocabulary cannot tokenize text")
    repeats = n_tokens // once + 2  # merges across the joins may cost a token or two
    return model.tokenize(PROMPT_TEXT * repeats, add_special=False)[:n_tokens]


def time_generation(setup: Setup, prompt: list[int], spec: RunSpec) -> tuple[float, float]:
    """(prefill, decode) tokens per second of one greedy generation of spec.gen_tokens tokens.

    Decoder.generate yields a token before decoding it: the first token arrives after the
    prefill, and the gen_tokens - 1 that follow each cost one step (decode and sample).
    """
    tokens = setup.new_decoder().generate(
        prompt, spec.alpha, setup.mode, GREEDY, spec.gen_tokens, stop_at_end=False
    )
    start = time.perf_counter()
    next(tokens)
    first = time.perf_counter()
    produced = 1 + sum(1 for _ in tokens)
    end = time.perf_counter()
    if produced != spec.gen_tokens:
        raise ClmError(f"generation stopped after {produced} of {spec.gen_tokens} tokens")
    return len(prompt) / (first - start), (spec.gen_tokens - 1) / (end - first)


def kv_cache_mib(model: ClmModel) -> float:
    """The KV cache llama.cpp allocates for the model: f16 keys and values for every block,
    position and sequence of its context (the n_ctx of one conversation times n_sequences)."""
    reader = open_gguf(model.info.path)
    arch = model.info.architecture
    n_head = field_value(reader, gguf.Keys.Attention.HEAD_COUNT.format(arch=arch))
    n_head_kv = field_value(reader, gguf.Keys.Attention.HEAD_COUNT_KV.format(arch=arch)) or n_head
    head_dim = field_value(reader, gguf.Keys.LLM.EMBEDDING_LENGTH.format(arch=arch)) // n_head
    key_length = field_value(reader, gguf.Keys.Attention.KEY_LENGTH.format(arch=arch)) or head_dim
    value_length = field_value(reader, gguf.Keys.Attention.VALUE_LENGTH.format(arch=arch)) or head_dim
    per_position = model.info.n_blocks * n_head_kv * (key_length + value_length) * KV_BYTES_PER_VALUE
    return per_position * model.n_ctx * model.n_sequences / MIB


def peak_rss_mib() -> float:
    """This process's resident-set high-water mark.

    Linux's VmHWM belongs to the address space, which exec replaces; ru_maxrss survives exec
    and would start from the parent's RSS at fork. ru_maxrss is the fallback (bytes on macOS).
    """
    status = Path("/proc/self/status")
    if status.is_file():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    import resource  # POSIX only, like the fallback itself

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / MIB if sys.platform == "darwin" else peak / 1024


def run(spec: RunSpec) -> dict[str, float]:
    """Load, warm up, time one generation, and report the figures of this process."""
    # base and two_model run plain files on purpose: their "alpha has no effect" warning is noise.
    warnings.filterwarnings("ignore", message=".*no CLM pre-layer.*")
    startup = peak_rss_mib()  # the interpreter, numpy and the llama.cpp bindings, before any model
    with ExitStack() as stack:
        setup = open_config(spec, stack)
        prompt = synthetic_prompt(setup.models[0], spec.prompt_tokens)
        list(setup.new_decoder().generate(prompt, spec.alpha, setup.mode, GREEDY, 2))  # warm-up
        prefill_tps, decode_tps = time_generation(setup, prompt, spec)
        peak = peak_rss_mib()
        # Only after the peak is taken: parsing GGUF metadata costs memory of its own.
        kv_cache = sum(kv_cache_mib(model) for model in setup.models)
        return {
            "prefill_tps": prefill_tps,
            "decode_tps": decode_tps,
            "peak_rss_mb": peak,
            "startup_rss_mb": startup,
            "kv_cache_mb": kv_cache,
        }


def main(argv: list[str]) -> int:
    try:
        print(json.dumps(run(RunSpec.from_json(argv[1]))))
    except ClmError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
