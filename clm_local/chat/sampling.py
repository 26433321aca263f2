"""Pick the next token from (mixed) logits with llama.cpp's own sampler chain.

In logits mode the distribution is made in Python (z = alpha * z_aligned + (1 - alpha) * z_ref),
so llama.cpp cannot sample from its context's logits. Its samplers also work on any
`llama_token_data_array`: we lay a numpy structured array over the same memory, write the logits
into it with one vectorised copy, and let the C chain do the rest. No per-token Python loop over
the vocabulary, and the same penalties / top-k / top-p / min-p / temperature as llama.cpp.
"""

from __future__ import annotations

import ctypes
import math
from dataclasses import dataclass

import numpy as np

from clm_local.errors import ClmError
from clm_local.runtime import library

# Ask llama.cpp for a random seed (its LLAMA_DEFAULT_SEED).
RANDOM_SEED = 0xFFFFFFFF
# How many recent tokens the repetition penalty looks at (llama.cpp's default).
PENALTY_LAST_N = 64


@dataclass(frozen=True)
class SamplingParams:
    """llama.cpp's sampling settings, with its defaults. temp <= 0 means greedy (argmax)."""

    temp: float = 0.8
    top_k: int = 40
    top_p: float = 0.95
    min_p: float = 0.05
    repeat_penalty: float = 1.0  # 1.0 is off
    seed: int = RANDOM_SEED

    def __post_init__(self) -> None:
        if not 0.0 <= self.temp < math.inf:
            raise ClmError(f"temp must be 0 (greedy) or more, got {self.temp}")
        if self.top_k < 0:
            raise ClmError(f"top_k must be 0 (off) or more, got {self.top_k}")
        if not 0.0 < self.top_p <= 1.0:
            raise ClmError(f"top_p must be in (0, 1], got {self.top_p}")
        if not 0.0 <= self.min_p <= 1.0:
            raise ClmError(f"min_p must be in [0, 1], got {self.min_p}")
        if self.repeat_penalty <= 0.0:
            raise ClmError(f"repeat_penalty must be positive (1.0 is off), got {self.repeat_penalty}")
        if not 0 <= self.seed <= RANDOM_SEED:
            raise ClmError(f"seed must be between 0 and {RANDOM_SEED}, got {self.seed}")

    @property
    def greedy(self) -> bool:
        return self.temp <= 0.0


class Sampler:
    """One llama.cpp sampler chain over a vocabulary of `n_vocab`; one per generated answer.

    The chain keeps state (the recent tokens of the repetition penalty, the random generator), so
    `accept` must see every token that `sample` chose. Free it with `close` (or a with block).
    """

    def __init__(self, n_vocab: int, params: SamplingParams) -> None:
        self._llama = library.llama()
        llama = self._llama
        self._chain = llama.llama_sampler_chain_init(llama.llama_sampler_chain_default_params())
        # The order of llama.cpp's common sampler: penalties, truncation, temperature, then draw.
        steps = [llama.llama_sampler_init_penalties(n_vocab, PENALTY_LAST_N, params.repeat_penalty, 0.0, 0.0)]
        if params.greedy:
            steps.append(llama.llama_sampler_init_greedy())
        else:
            steps += [
                llama.llama_sampler_init_top_k(params.top_k),
                llama.llama_sampler_init_top_p(params.top_p, 1),
                llama.llama_sampler_init_min_p(params.min_p, 1),
                llama.llama_sampler_init_temp(params.temp),
                llama.llama_sampler_init_dist(params.seed),
            ]
        for step in steps:
            llama.llama_sampler_chain_add(self._chain, step)  # the chain owns and frees its steps

        dtype = np.dtype([("id", np.int32), ("logit", np.float32), ("p", np.float32)], align=True)
        if dtype.itemsize != ctypes.sizeof(llama.llama_token_data):
            raise ClmError("llama_token_data has an unexpected layout in this llama-cpp-python")
        self._ids = np.arange(n_vocab, dtype=np.int32)
        self._data = np.zeros(n_vocab, dtype=dtype)
        self._pointer = self._data.ctypes.data_as(llama.llama_token_data_p)
        self._array = llama.llama_token_data_array(self._pointer, n_vocab, -1, False)
        self._array_ref = ctypes.byref(self._array)

    def sample(self, logits: np.ndarray) -> int:
        """The chain's choice for one row of logits; also accepted into the chain's history."""
        # The samplers sort and shrink the array in place: refill all of it every time.
        self._data["id"] = self._ids
        self._data["logit"] = logits
        array = self._array
        array.data = self._pointer
        array.size = len(self._ids)
        array.selected = -1
        array.sorted = False
        self._llama.llama_sampler_apply(self._chain, self._array_ref)
        if not 0 <= array.selected < array.size:
            raise ClmError("llama.cpp's sampler chain selected no token")
        token = int(array.data[array.selected].id)
        self._llama.llama_sampler_accept(self._chain, token)
        return token

    def close(self) -> None:
        if self._chain is not None:
            self._llama.llama_sampler_free(self._chain)
            self._chain = None

    def __enter__(self) -> Sampler:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        if getattr(self, "_chain", None) is not None:
            self.close()
