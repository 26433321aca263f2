"""The one timed greedy loop of the benchmarks that decode through ClmModel directly.

`greedy_decode_speed` reads a prompt and times greedy decoding at one alpha, with the sequences and
coefficients the runtime uses for that mode (runtime/model.py's sequence_coefficients): one
sequence in embed mode, the aligned and reference pair mixed before the head in logits mode.
"""

from __future__ import annotations

import time

import numpy as np

from clm_local.runtime.model import ALIGNED_SEQ, REFERENCE_SEQ, ClmModel, sequence_coefficients


def greedy_decode_speed(model: ClmModel, prompt: list[int], tokens: int, alpha: float, mode: str) -> float:
    """Greedy decode tokens per second after reading `prompt` (the prompt is not timed)."""
    model.reset()
    coefficients = sequence_coefficients(model.info, alpha, mode)
    sequences = (ALIGNED_SEQ, REFERENCE_SEQ)[: len(coefficients)]
    if model.info.is_clm:
        for seq, coefficient in zip(sequences, coefficients, strict=True):
            model.set_alpha(seq, coefficient)
    mix = {ALIGNED_SEQ: (REFERENCE_SEQ, alpha)} if len(sequences) == 2 else {}
    out = model.decode(dict.fromkeys(sequences, prompt), mix=mix)
    started = time.perf_counter()
    for _ in range(tokens):
        token = int(np.argmax(out[ALIGNED_SEQ][-1]))
        out = model.decode(dict.fromkeys(sequences, [token]), mix=mix)
    return tokens / (time.perf_counter() - started)
