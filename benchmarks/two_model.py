"""The alternative to CLM that the benchmark prices it against: decoding-time realignment with two
ordinary models (CLM.md, "Inference": mixing at alpha approximates the DPO optimum at beta/alpha).

Without the pre-layer hook a user holds the base model and the aligned model in two llama.cpp
contexts, decodes every token in one and then the other, and mixes the logits in Python:
z = alpha * z_aligned + (1 - alpha) * z_base. Built on chat's Decoder, so the same generation
loop, cache handling and sampler run it: only the source of the logits differs.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from clm_local.chat.generation import Decoder
from clm_local.runtime.model import ClmModel, mix_logits


class TwoModelDecoder(Decoder):
    """A Decoder over two plain models whose logits are mixed by alpha, one model after the other."""

    def __init__(self, aligned: ClmModel, base: ClmModel) -> None:
        super().__init__(aligned)
        self.base = Decoder(base)

    def prefill(self, tokens: Sequence[int], alpha: float, mode: str) -> np.ndarray:
        z_aligned = super().prefill(tokens, alpha, mode)
        return mix_logits(z_aligned, self.base.prefill(tokens, alpha, mode), alpha)

    def step(self, token: int, alpha: float) -> np.ndarray:
        z_aligned = super().step(token, alpha)
        return mix_logits(z_aligned, self.base.step(token, alpha), alpha)
