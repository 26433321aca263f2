"""A CLM GGUF loaded in the patched llama.cpp: `clm_local.load(path)` and `model.logits(...)`.

Two ways to apply alpha (CLM.md, "Inference"):
- embed mode: one sequence whose pre-layer coefficient is alpha: h = e + alpha * (P(e) - e);
- logits mode: an aligned sequence (coefficient 1) and a reference sequence (coefficient 0) decoded
  in the same batch, then z = alpha * z_aligned + (1 - alpha) * z_ref. The LM head is linear, so the
  patched llama.cpp mixes the two final hidden states and runs the head once per pair; for a head
  that is not (Gemma 2's soft-capped logits) the two rows of logits are mixed here.
Both coefficients are graph inputs of the patched llama.cpp, so changing alpha reloads nothing.

A GGUF without `clm.*` keys loads as a plain model: alpha has no effect (one warning says so).
"""

from __future__ import annotations

import ctypes
import functools
import os
import threading
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from clm_local.errors import ClmError
from clm_local.gguf.check import check_gguf
from clm_local.gguf.header import StringArray
from clm_local.gguf.keys import (
    KEY_ALPHA_DEFAULT,
    KEY_MIX_DEFAULT,
    KEY_PRE_LAYER_COUNT,
    MIX_MODES,
)
from clm_local.runtime import library
from clm_local.runtime import rpc as rpc_backend
from clm_local.runtime.threads import ThreadTuner, candidate_counts, usable_cores

ALIGNED_SEQ = 0  # in logits mode: coefficient 1 (the aligned path); in embed mode: the only sequence
REFERENCE_SEQ = 1  # in logits mode: coefficient 0 (the base model's path)
ALL_LAYERS = 999  # n_gpu_layers that offloads every layer (llama.cpp caps it at the model's count)
FLOAT32_MAX = float(np.finfo(np.float32).max)
LLAMA_VOCAB_TYPE_NONE = 0  # llama.h: a vocabulary of token ids without text

NON_FINITE_CAUSES = (
    "the file's weights probably hold NaN or Inf (see `clm-local info --check-values FILE`), "
    "or alpha is too extreme for this model"
)

Method = TypeVar("Method", bound=Callable[..., Any])


def _uses_context(method: Method) -> Method:
    """Mark a method that touches the llama.cpp context: it refuses a closed model, and a second
    thread while another one is inside any such method (llama.cpp contexts are not thread-safe)."""

    @functools.wraps(method)
    def guarded(self: ClmModel, *args: Any, **kwargs: Any) -> Any:
        self._enter(method.__name__)
        try:
            return method(self, *args, **kwargs)
        finally:
            self._leave()

    return guarded  # type: ignore[return-value]


@dataclass(frozen=True)
class ModelInfo:
    """What a CLM GGUF declares, read from its metadata before llama.cpp loads it."""

    path: str
    name: str | None
    architecture: str
    n_blocks: int  # blocks in the file: the base's N plus the pre-layers
    n_pre_layers: int  # 0 for an ordinary model
    alpha_default: float
    mix_default: str
    n_vocab: int
    n_ctx_train: int

    @property
    def is_clm(self) -> bool:
        return self.n_pre_layers > 0


def read_info(path: str | Path) -> ModelInfo:
    """Validate the file (clm_local.gguf.check) and refuse what the runtime cannot serve, by name."""
    header = check_gguf(path)
    values = header.values
    architecture = str(values["general.architecture"])
    n_pre_layers = int(values.get(KEY_PRE_LAYER_COUNT, 0))
    tokens = values.get("tokenizer.ggml.tokens")
    n_vocab = tokens.count if isinstance(tokens, StringArray) else values.get(f"{architecture}.vocab_size", 0)
    return ModelInfo(
        path=str(path),
        name=values.get("general.name"),
        architecture=architecture,
        n_blocks=int(values[f"{architecture}.block_count"]),
        n_pre_layers=n_pre_layers,
        alpha_default=float(values.get(KEY_ALPHA_DEFAULT, 1.0)),
        mix_default=str(values.get(KEY_MIX_DEFAULT, "logits")),
        n_vocab=int(n_vocab),
        n_ctx_train=int(values.get(f"{architecture}.context_length", 0)),
    )


GPU_LAYERS_VARIABLE = "CLM_LOCAL_GPU_LAYERS"


def gpu_layers_from_environment() -> int:
    """The layers to offload when a caller does not say: CLM_LOCAL_GPU_LAYERS (99: all), else 0.
    Why: one setting reaches every model a process loads (chat, the server, the tests), which is
    how a GPU machine runs everything offloaded (`make device-check`). A CPU build ignores it."""
    value = os.environ.get(GPU_LAYERS_VARIABLE, "").strip()
    if not value:
        return 0
    if not value.isdigit():
        raise ClmError(f"{GPU_LAYERS_VARIABLE} must be a number of layers (99: all), got {value!r}")
    return int(value)


def check_alpha(alpha: float) -> float:
    """alpha as a float, refused unless finite in float32 (llama.cpp's type for it)."""
    alpha = float(alpha)
    if not abs(alpha) <= FLOAT32_MAX:
        raise ClmError(f"alpha must be a finite number, got {alpha}")
    return alpha


def check_mode(mode: str) -> str:
    if mode not in MIX_MODES:
        raise ClmError(f"mode must be one of {', '.join(MIX_MODES)}, got {mode!r}")
    return mode


def sequence_coefficients(info: ModelInfo, alpha: float, mode: str) -> tuple[float, ...]:
    """The pre-layer coefficient of each sequence that computes `mode`'s logits at `alpha`: this
    is where alpha enters the runtime. A plain model: one sequence as it is; embed mode: one at
    alpha; logits mode: aligned (1) and reference (0), whose logits are then mixed by alpha."""
    if not info.is_clm:
        return (1.0,)
    return (alpha,) if mode == "embed" else (1.0, 0.0)


def request_sequences(info: ModelInfo, alpha: float, mode: str) -> tuple[float, ...]:
    """sequence_coefficients for an answer whose alpha cannot change (a server request, a
    one-shot answer): with the fewest sequences (fewest_sequences_mode)."""
    return sequence_coefficients(info, alpha, fewest_sequences_mode(alpha, mode))


def fewest_sequences_mode(alpha: float, mode: str) -> str:
    """The mode that computes `mode`'s logits at `alpha` with the fewest sequences, for an answer
    whose alpha cannot change (a one-shot answer, a server request): logits mode at alpha 0 or 1
    is a single path (the base model, or the aligned one), which embed mode computes identically
    with one sequence instead of two."""
    return "embed" if mode == "logits" and alpha in (0.0, 1.0) else mode


class ClmModel:
    """One GGUF in one llama.cpp context, with room for the two sequences of logits mode.

    `n_ctx` is the context of one conversation (one sequence). A CLM model reserves it for each
    of its two sequences (aligned and reference), so the KV cache holds 2 * n_ctx positions.
    `n_sequences` overrides that count: 1 for embed mode only, more for parallel sampling.
    `kv_pool` instead makes one KV cache of that many positions shared by all sequences (llama.cpp's
    unified cache, as llama-server uses): any mix of sequences then goes through one forward pass
    per llama_decode, and `n_batch` counts the tokens of a whole call rather than one sequence's.
    The caller keeps the sequences' total within the pool (a full pool fails the decode).
    `n_threads` fixes the CPU threads; by default decoding uses every usable core and fewer while
    other programs take some (runtime/threads.py). `rpc` lists llama.cpp rpc-servers
    ("HOST:PORT") that hold the offloaded layers before any local GPU (runtime/rpc.py); with it,
    `n_gpu_layers` defaults to every layer. `repack` off loads the weights as stored, without
    llama.cpp's CPU repacking into interleaved layouts (llama-cli's --no-repack), for measuring
    what the repacked kernels change.

    One thread at a time: a call from a second thread while the first is inside a method raises
    ClmError (a server owns the model from one thread). Every method of a closed model raises
    ClmError. `cache_version` changes whenever the KV cache does, so that a Decoder can tell
    that someone else used the model since its last step.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        n_ctx: int = 2048,
        n_threads: int | None = None,
        n_gpu_layers: int | None = None,
        n_batch: int = 512,
        n_sequences: int | None = None,
        kv_pool: int | None = None,
        rpc: str | Sequence[str] | None = None,
        repack: bool = True,
    ) -> None:
        self._model = self._context = self._batch = None
        self._guard = threading.Lock()  # protects _owner and _depth, held only briefly
        self._owner: int | None = None  # the thread inside a context-touching method
        self._depth = 0
        self.cache_version = 0
        self.info = read_info(path)
        if n_ctx < 1 or n_batch < 1 or (kv_pool is not None and kv_pool < 1):
            raise ClmError("n_ctx, n_batch and kv_pool must be positive")
        if n_threads is not None and n_threads < 1:
            raise ClmError(f"n_threads must be at least 1, got {n_threads}")
        self.rpc = rpc_backend.parse_endpoints(rpc) if rpc else []
        asked = n_gpu_layers is not None
        if not asked:
            n_gpu_layers = ALL_LAYERS if self.rpc else gpu_layers_from_environment()
        if n_gpu_layers < 0:
            raise ClmError(f"n_gpu_layers must be 0 or more (99: all layers), got {n_gpu_layers}")
        self._llama = library.llama()
        self._warned_plain = False
        if asked and n_gpu_layers and not self.rpc and not library.local_gpu_devices():
            warnings.warn(
                f"n_gpu_layers={n_gpu_layers} has no effect: this llama.cpp build has no GPU backend "
                "(clm-local runtime install --backend cuda or metal)",
                stacklevel=2,
            )

        model_params = self._llama.llama_model_default_params()
        model_params.n_gpu_layers = n_gpu_layers
        model_params.use_extra_bufts = repack
        if self.rpc:  # llama.cpp's own order: the servers first, then this machine's GPUs
            devices = rpc_backend.rpc_devices(self.rpc) + library.local_gpu_devices()
            self._devices = rpc_backend.device_array(devices)  # alive while llama.cpp reads it
            model_params.devices = ctypes.cast(self._devices, ctypes.c_void_p)
        self._model = self._llama.llama_model_load_from_file(str(path).encode(), model_params)
        if not self._model:
            raise ClmError(f"llama.cpp could not load {path}: {library.last_log_error()}")
        if library.n_pre_layer(self._model) != self.info.n_pre_layers:
            raise ClmError(f"{path}: llama.cpp reads a different pre-layer count than the file declares")

        self.n_sequences = n_sequences or (2 if self.info.is_clm else 1)
        if self.n_sequences < 1:
            raise ClmError("n_sequences must be positive")
        # n_threads fixes the count; by default it follows how busy the machine is (threads.py)
        self._threads = ThreadTuner((n_threads,) if n_threads else candidate_counts(usable_cores()))
        self._vocab = self._llama.llama_model_get_vocab(self._model)
        self.n_vocab = int(self._llama.llama_vocab_n_tokens(self._vocab))
        self.has_text_vocabulary = self._llama.llama_vocab_type(self._vocab) != LLAMA_VOCAB_TYPE_NONE
        self._n_batch_asked = n_batch
        self.kv_pool = kv_pool
        self._create_context(n_ctx)
        # whether llama.cpp mixes logits-mode pairs before the head (decode's `mix`), else numpy does
        self.mixes_before_head = (
            self.info.is_clm
            and self.n_sequences >= 2
            and library.set_logit_mix(self._context, 0, 1, 1.0)
            and library.set_logit_mix(self._context, 0, -1, 1.0)
        )

    def _create_context(self, n_ctx: int) -> None:
        """The llama.cpp context, its batch and its memory handle, for n_ctx positions a sequence."""
        self._applied_threads = threads = self._threads.current
        context_params = self._llama.llama_context_default_params()
        context_params.n_seq_max = self.n_sequences
        if self.kv_pool is None:  # a stream of n_ctx positions for each sequence
            context_params.n_ctx = n_ctx * self.n_sequences
            batch = min(self._n_batch_asked, n_ctx) * self.n_sequences
        else:  # one pool, and one ubatch for any mix of sequences (llama.cpp's split_simple)
            context_params.n_ctx = self.kv_pool
            context_params.kv_unified = True
            batch = self._n_batch_asked
        context_params.n_batch = context_params.n_ubatch = batch
        context_params.n_threads = context_params.n_threads_batch = threads
        context_params.no_perf = True
        self._context = self._llama.llama_init_from_model(self._model, context_params)
        if not self._context:
            raise ClmError(
                f"llama.cpp could not create a context for {self.info.path}: {library.last_log_error()}"
            )
        self.n_ctx = n_ctx
        self.n_batch = batch
        self._batch = self._llama.llama_batch_init(self.n_batch, 0, 1)
        self._memory = self._llama.llama_get_memory(self._context)

    # -- the public API ------------------------------------------------------------------------

    @_uses_context
    def logits(
        self, token_ids: Sequence[int], alpha: float | None = None, mode: str | None = None
    ) -> np.ndarray:
        """Blended logits `[len(token_ids), n_vocab]` for every position, from an empty cache."""
        tokens = self.check_tokens(token_ids)
        if len(tokens) > self.n_ctx:
            raise ClmError(
                f"{len(tokens)} tokens do not fit the context of {self.n_ctx}: load with a larger n_ctx"
            )
        alpha = check_alpha(self.info.alpha_default if alpha is None else alpha)
        mode = check_mode(self.info.mix_default if mode is None else mode)
        self.reset()
        if not self.info.is_clm:
            self._warn_plain()
            return self.decode({ALIGNED_SEQ: tokens}, all_logits=True)[ALIGNED_SEQ]
        if mode == "embed":
            self.set_alpha(ALIGNED_SEQ, alpha)
            return self.decode({ALIGNED_SEQ: tokens}, all_logits=True)[ALIGNED_SEQ]
        self.set_alpha(ALIGNED_SEQ, 1.0)
        self.set_alpha(REFERENCE_SEQ, 0.0)
        both = {ALIGNED_SEQ: tokens, REFERENCE_SEQ: tokens}
        return self.decode(both, all_logits=True, mix={ALIGNED_SEQ: (REFERENCE_SEQ, alpha)})[ALIGNED_SEQ]

    # -- building blocks for chat and benchmarks --------------------------------------------------

    @_uses_context
    def check_tokens(self, token_ids: Sequence[int]) -> list[int]:
        tokens = [int(t) for t in token_ids]
        if not tokens:
            raise ClmError("no tokens given")
        bad = [t for t in tokens if not 0 <= t < self.n_vocab]
        if bad:
            raise ClmError(f"token id {bad[0]} is out of range (vocabulary of {self.n_vocab})")
        return tokens

    @_uses_context
    def reset(self) -> None:
        """Empty the KV cache of every sequence."""
        self.cache_version += 1
        self._llama.llama_memory_clear(self._memory, True)

    @_uses_context
    def resize_context(self, n_ctx: int) -> None:
        """Room for n_ctx positions a sequence, in a new context: every sequence starts empty, at
        its starting alpha. Why: the KV cache's size is most of a context's creation time (llama.cpp
        clears it), so a one-shot answer, which can measure its prompt only once the model (and
        its tokenizer) is loaded, sizes the context to prompt plus answer this way. Should the new
        context fail, the model is closed."""
        if n_ctx < 1:
            raise ClmError("n_ctx must be positive")
        if n_ctx == self.n_ctx:
            return
        self.cache_version += 1
        self._free_context()
        self._create_context(n_ctx)

    @_uses_context
    def forget_after(self, seq_id: int, position: int) -> None:
        """Drop a sequence's cached positions from `position` on."""
        self._check_sequence(seq_id)
        self.cache_version += 1
        if not self._llama.llama_memory_seq_rm(self._memory, seq_id, position, -1):
            raise ClmError(f"llama.cpp could not drop positions {position}.. of sequence {seq_id}")

    @_uses_context
    def next_position(self, seq_id: int) -> int:
        """The position after the last one cached for the sequence (0 when empty)."""
        self._check_sequence(seq_id)
        return int(self._llama.llama_memory_seq_pos_max(self._memory, seq_id)) + 1

    @_uses_context
    def set_alpha(self, seq_id: int, alpha: float) -> None:
        """The pre-layer coefficient of a sequence, from its next decoded token on."""
        self._check_sequence(seq_id)
        self.cache_version += 1
        library.set_pre_layer_alpha(self._context, seq_id, check_alpha(alpha))

    @_uses_context
    def get_alpha(self, seq_id: int) -> float:
        self._check_sequence(seq_id)
        return library.get_pre_layer_alpha(self._context, seq_id)

    @_uses_context
    def decode(
        self,
        tokens_by_seq: dict[int, list[int]],
        *,
        all_logits: bool = False,
        check: bool = True,
        mix: Mapping[int, tuple[int, float]] | None = None,
    ) -> dict[int, np.ndarray]:
        """Append tokens to sequences (one batch for all of them) and return their logits.

        Each sequence continues from its cached positions. With all_logits the result has a row
        per token, otherwise one row: the last token's. The sequences advance together through
        chunks of the batch size, so in logits mode the two paths always share a batch.
        `mix` maps an aligned sequence to its (reference sequence, alpha): the aligned sequence's
        rows are then alpha * z_aligned + (1 - alpha) * z_ref and the reference's are not returned;
        the pair must hold the same positions and get the same tokens.
        Non-finite logits raise ClmError unless `check` is off: a caller serving several
        sequences (the server) then checks each one's rows itself, so that one sequence's
        extreme alpha fails only that sequence.
        """
        if not tokens_by_seq:
            return {}
        mix = mix or {}
        for seq in [*tokens_by_seq, *mix, *(reference for reference, _ in mix.values())]:
            self._check_sequence(seq)
        self.cache_version += 1
        starts = {seq: self.next_position(seq) for seq in tokens_by_seq}
        for seq, tokens in tokens_by_seq.items():
            needed = starts[seq] + len(tokens)
            if needed > self.n_ctx:
                raise ClmError(f"the context is full: {needed} positions needed, {self.n_ctx} available")
        for aligned, (reference, _) in mix.items():
            pair = f"sequences {aligned} and {reference} are mixed but"
            if not (aligned in tokens_by_seq and reference in tokens_by_seq):
                raise ClmError(f"{pair} are not both in the batch")
            if starts[aligned] != starts[reference] or tokens_by_seq[aligned] != tokens_by_seq[reference]:
                raise ClmError(f"{pair} do not hold the same positions and tokens")
        in_graph = bool(mix) and self.mixes_before_head
        try:
            if in_graph:
                for aligned, (reference, alpha) in mix.items():
                    if not library.set_logit_mix(self._context, aligned, reference, check_alpha(alpha)):
                        raise ClmError(f"llama.cpp refused to mix sequences {aligned} and {reference}")
            # llama.cpp gives the reference rows the mixed logits too: not worth copying
            skipped = {reference for reference, _ in mix.values()} if in_graph else set()
            rows = self._decode_chunks(tokens_by_seq, starts, all_logits, skipped)
        finally:
            for aligned in mix if in_graph else ():
                library.set_logit_mix(self._context, aligned, -1, 1.0)
        for aligned, (reference, alpha) in mix.items():
            if not in_graph:
                rows[aligned] = mix_logits(rows[aligned], rows.pop(reference), alpha)
        if check:
            for block in rows.values():
                check_finite(block)
        return rows

    def _decode_chunks(
        self,
        tokens_by_seq: dict[int, list[int]],
        starts: dict[int, int],
        all_logits: bool,
        skipped: set[int],
    ) -> dict[int, np.ndarray]:
        """decode's llama_decode calls: the batch in chunks, and the rows of logits of each
        sequence but the skipped ones."""
        longest = max(len(tokens) for tokens in tokens_by_seq.values())
        fits = sum(len(tokens) for tokens in tokens_by_seq.values()) <= self.n_batch
        chunk = longest if fits else max(1, self.n_batch // len(tokens_by_seq))
        rows: dict[int, list[np.ndarray]] = {seq: [] for seq in tokens_by_seq}
        for offset in range(0, longest, chunk):
            wanted: list[tuple[int, int]] = []  # (seq, number of output rows) in batch order
            n = 0
            for seq, tokens in tokens_by_seq.items():
                piece = tokens[offset : offset + chunk]
                for i, token in enumerate(piece):
                    is_last = offset + i == len(tokens) - 1
                    self._put(n, token, starts[seq] + offset + i, seq, all_logits or is_last)
                    n += 1
                outputs = len(piece) if all_logits else int(offset <= len(tokens) - 1 < offset + chunk)
                wanted.append((seq, outputs))
            self._batch.n_tokens = n
            status = self._timed_decode(n)
            if status != 0:
                reason = "no room left in the KV cache" if status == 1 else library.last_log_error()
                raise ClmError(f"llama.cpp could not decode the batch (status {status}): {reason}")
            n_out = sum(count for _, count in wanted)
            if n_out:
                pointer = self._llama.llama_get_logits(self._context)
                block = np.ctypeslib.as_array(pointer, shape=(n_out, self.n_vocab))
                row = 0
                for seq, count in wanted:
                    if seq not in skipped:
                        rows[seq].append(block[row : row + count].copy())
                    row += count
        return {seq: np.concatenate(parts) for seq, parts in rows.items() if seq not in skipped}

    def _timed_decode(self, n_tokens: int) -> int:
        """llama_decode of the filled batch, with the thread count the tuner picks for it."""
        threads = self._threads.threads_for(n_tokens)
        if threads != self._applied_threads:
            self._llama.llama_set_n_threads(self._context, threads, threads)
            self._applied_threads = threads
        started = time.perf_counter()
        status = self._llama.llama_decode(self._context, self._batch)
        if status == 0:
            self._threads.record(n_tokens, threads, time.perf_counter() - started)
        return status

    def _check_sequence(self, seq_id: int) -> None:
        """llama.cpp aborts the process on a sequence id it has no room for: refuse it here."""
        if (
            isinstance(seq_id, bool)
            or not isinstance(seq_id, int | np.integer)
            or not (0 <= seq_id < self.n_sequences)
        ):
            raise ClmError(f"sequence id {seq_id!r} is out of range: this model has {self.n_sequences} (0..)")

    @property
    def forward_passes(self) -> int:
        """Forward passes (llama.cpp ubatches) computed since the context was created: one
        llama_decode takes several when its tokens outnumber n_batch, or (without kv_pool) when
        its sequences cannot share one ubatch."""
        return library.n_ubatch_computed(self._context)

    @property
    def n_threads(self) -> int:
        """The CPU threads decoding uses now (it changes with the machine's load unless fixed)."""
        return self._threads.current

    def _put(self, index: int, token: int, position: int, seq_id: int, want_logits: bool) -> None:
        batch = self._batch
        batch.token[index] = token
        batch.pos[index] = position
        batch.n_seq_id[index] = 1
        batch.seq_id[index][0] = seq_id
        batch.logits[index] = want_logits

    def _warn_plain(self) -> None:
        if not self._warned_plain:
            warnings.warn(
                f"{self.info.path} has no CLM pre-layer: alpha has no effect on this model",
                stacklevel=3,
            )
            self._warned_plain = True

    # -- text: tokenizer, special tokens, chat template --------------------------------------------

    @_uses_context
    def tokenize(self, text: str, *, add_special: bool = True, parse_special: bool = False) -> list[int]:
        """Token ids of `text`.

        add_special adds BOS/EOS where the vocabulary asks for them (leave it off for text rendered
        by the model's own chat template: the template writes them). parse_special reads markers
        such as `<|im_start|>` as their special tokens instead of as plain text.
        """
        self._require_text_vocabulary()
        data = text.encode("utf-8")
        capacity = len(data) + 2  # a token is at least one byte, plus room for BOS and EOS
        for _ in range(2):  # a negative count is the capacity actually needed
            buffer = (self._llama.llama_token * capacity)()
            count = self._llama.llama_tokenize(
                self._vocab, data, len(data), buffer, capacity, add_special, parse_special
            )
            if count >= 0:
                return buffer[:count]
            capacity = -count
        raise ClmError(f"llama.cpp could not tokenize a text of {len(data)} bytes")

    @_uses_context
    def token_to_piece(self, token: int, *, special: bool = False) -> bytes:
        """The bytes of one token. A piece can end inside a UTF-8 character: decode a stream of
        pieces incrementally, not piece by piece. special renders control tokens such as EOS."""
        self._require_text_vocabulary()
        if not 0 <= token < self.n_vocab:
            raise ClmError(f"token id {token} is out of range (vocabulary of {self.n_vocab})")
        buffer = ctypes.create_string_buffer(64)
        count = self._llama.llama_token_to_piece(self._vocab, token, buffer, len(buffer), 0, special)
        if count < 0:
            buffer = ctypes.create_string_buffer(-count)
            count = self._llama.llama_token_to_piece(self._vocab, token, buffer, len(buffer), 0, special)
        return buffer.raw[:count]

    @_uses_context
    def special_token(self, which: str) -> str:
        """The text of the "bos" or "eos" token ("" when the vocabulary has none), for templates."""
        lookup = {"bos": self._llama.llama_vocab_bos, "eos": self._llama.llama_vocab_eos}[which]
        token = int(lookup(self._vocab))
        if token == self._llama.LLAMA_TOKEN_NULL or not self.has_text_vocabulary:
            return ""
        return self.token_to_piece(token, special=True).decode("utf-8", errors="replace")

    @_uses_context
    def is_end_of_generation(self, token: int) -> bool:
        """Whether the token ends an answer (EOS, end-of-turn, ...), as the vocabulary declares."""
        return bool(self._llama.llama_vocab_is_eog(self._vocab, token))

    @_uses_context
    def chat_template(self) -> str | None:
        """The Jinja chat template stored in the GGUF (`tokenizer.chat_template`), if any."""
        template = self._llama.llama_model_chat_template(self._model, None)
        return template.decode("utf-8") if template else None

    def _require_text_vocabulary(self) -> None:
        if not self.has_text_vocabulary:
            raise ClmError(
                f"{self.info.path} has no tokenizer (tokenizer.ggml.model none): it takes token ids only"
            )

    # -- lifetime and ownership -------------------------------------------------------------------

    def _enter(self, method: str) -> None:
        me = threading.get_ident()
        with self._guard:  # the closed check too: close() frees under this lock
            if self._context is None:
                raise ClmError("this model is closed (load it again)")
            if self._owner not in (None, me):
                raise ClmError(
                    f"this model is in use by another thread ({method} refused); a model serves one thread "
                    "at a time (load one model per thread, or call it from one thread)"
                )
            self._owner = me
            self._depth += 1

    def _leave(self) -> None:
        with self._guard:
            self._depth -= 1
            if not self._depth:
                self._owner = None

    def close(self) -> None:
        """Free the llama.cpp context and model (also done when the object is collected).
        Closing twice is harmless; closing while another thread uses the model raises ClmError."""
        with self._guard:
            if self._owner not in (None, threading.get_ident()):
                raise ClmError("close: this model is in use by another thread")
            self._free()

    def _free(self) -> None:
        self.cache_version += 1
        self._free_context()
        if self._model:
            self._llama.llama_model_free(self._model)
            self._model = None

    def _free_context(self) -> None:
        """The context and its batch (the model's weights stay): for close and resize_context."""
        if self._batch is not None:
            self._llama.llama_batch_free(self._batch)
            self._batch = None
        if self._context:
            self._llama.llama_free(self._context)
            self._context = None

    def __enter__(self) -> ClmModel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        if getattr(self, "_llama", None) is not None:
            self._free()  # nothing can be inside a method of an object being collected


def check_finite(logits: np.ndarray) -> np.ndarray:
    """The logits, or ClmError when any is NaN or Inf (sampling from them would be silent garbage)."""
    if not np.isfinite(logits).all():
        raise ClmError(f"the model produced non-finite logits (NaN or Inf): {NON_FINITE_CAUSES}")
    return logits


def mix_logits(z_aligned: np.ndarray, z_reference: np.ndarray, alpha: float) -> np.ndarray:
    """The paper's merge after the LM head: alpha * z_aligned + (1 - alpha) * z_ref. An overflow
    gives Inf or NaN quietly here; check_finite turns it into an error."""
    with np.errstate(over="ignore", invalid="ignore"):
        return alpha * z_aligned + (1.0 - alpha) * z_reference


# `clm_local.load(path, n_ctx=..., n_threads=..., n_gpu_layers=...)` reads as a verb; it is the class.
load = ClmModel
