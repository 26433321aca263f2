"""Token-level generation with alpha: the one code path that chat, demo and the benchmark share.

A `Decoder` keeps a ClmModel's KV cache in step with the list of tokens it holds, so a new prompt
only costs the tokens after the longest prefix it shares with the cache (a chat re-renders the
whole conversation every turn, but only the new turn is decoded).

What the cache holds depends on how alpha is applied (CLM.md, "KV-cache consequence"):
- logits mode: the aligned sequence (coefficient 1) and the reference sequence (coefficient 0)
  hold the same tokens; alpha only mixes their logits, so a new alpha costs nothing. At alpha 0
  or 1 the mix is a single path, so the Decoder starts on that one sequence (half the work per
  token) and builds the other one, with one prefill of the cached tokens, when an alpha first
  needs the pair; from then on the pair is kept, and every alpha is free again;
- embed mode: one sequence whose every key and value was computed at alpha: a new alpha means
  computing the context again;
- a plain (non-CLM) model: one sequence, alpha has no effect.
A cache computed at one coefficient serves every request that needs that coefficient: logits
mode at alpha 1 and embed mode at alpha 1 are the same single path.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence

import numpy as np

from clm_local.chat.sampling import Sampler, SamplingParams
from clm_local.errors import ClmError
from clm_local.runtime.model import (
    ALIGNED_SEQ,
    REFERENCE_SEQ,
    ClmModel,
    check_alpha,
    check_mode,
    fewest_sequences_mode,
    sequence_coefficients,
)


class Decoder:
    """Owns one model's KV cache for generation; use one Decoder per model at a time.

    `cached` lists the tokens whose keys and values the cache holds, `coefficients` the pre-layer
    coefficient of each sequence that computed them. Anything else that uses the model (`logits`,
    another Decoder or ChatSession) changes the cache under this one; the model's `cache_version`
    tells: the next prompt is then decoded from scratch, and a generation in progress stops with
    ClmError rather than continue from a cache it does not know.
    """

    def __init__(self, model: ClmModel) -> None:
        self.model = model
        self.cached: list[int] = []
        self.coefficients: dict[int, float] = {}
        self._warned_plain = False
        self.hit_max_tokens = False  # whether the last generate() stopped at max_tokens
        model.reset()
        self._version = model.cache_version

    @property
    def is_stale(self) -> bool:
        """Whether something else changed the model's cache since this Decoder last did."""
        return self._version != self.model.cache_version

    @property
    def n_ctx(self) -> int:
        return self.model.n_ctx

    def coefficients_for(self, alpha: float, mode: str) -> dict[int, float]:
        """The sequences (and the pre-layer coefficient of each) that serve `alpha` in `mode`,
        given what the cache holds: as few as the alpha needs, except that logits mode keeps the
        aligned/reference pair once it is built. Sequences already cached at a needed coefficient
        are kept; the others are numbered from the free ones."""
        needed = sequence_coefficients(self.model.info, alpha, fewest_sequences_mode(alpha, mode))
        current = self.coefficients
        if mode == "logits" and self.model.info.is_clm and sorted(current.values()) == [0.0, 1.0]:
            return dict(current)
        kept = {seq: coefficient for seq, coefficient in current.items() if coefficient in needed}
        free = [seq for seq in (ALIGNED_SEQ, REFERENCE_SEQ) if seq not in kept]
        missing = [coefficient for coefficient in needed if coefficient not in kept.values()]
        return kept | dict(zip(free, missing, strict=False))

    def _kept(self, wanted: dict[int, float]) -> dict[int, float]:
        return {seq: c for seq, c in wanted.items() if self.coefficients.get(seq) == c}

    def needs_recompute(self, alpha: float, mode: str) -> bool:
        """Whether serving `alpha` in `mode` would throw the cached context away."""
        return bool(self.cached) and not self._kept(self.coefficients_for(alpha, mode))

    def needs_reference(self, alpha: float, mode: str) -> bool:
        """Whether serving `alpha` in `mode` adds a sequence to the cached one (logits mode leaving
        alpha 0 or 1 for the first time): the cached context is then decoded once more, on it."""
        wanted = self.coefficients_for(alpha, mode)
        return bool(self.cached) and 0 < len(self._kept(wanted)) < len(wanted)

    def prefill(self, tokens: Sequence[int], alpha: float, mode: str) -> np.ndarray:
        """Bring the cache to `tokens` and return the logits (mixed by alpha) after the last one.

        Only the tokens after the prefix shared with the cache are decoded; at least the last one
        always is, since its logits are what the next token is drawn from. A sequence added to
        the cached one (needs_reference) first decodes that shared prefix, in one batch.
        """
        tokens = self.model.check_tokens(tokens)
        if len(tokens) > self.n_ctx:
            raise ClmError(f"the prompt has {len(tokens)} tokens, the context only {self.n_ctx}")
        if self.is_stale:  # prime again: forget what this Decoder thought the cache held
            self.cached, self.coefficients = [], {}
        wanted = self.coefficients_for(alpha, mode)
        kept = self._kept(wanted)
        if not kept:
            self.model.reset()
            self.cached = []
        for seq in self.coefficients.keys() - wanted.keys():  # no longer needed: dropped
            self.model.forget_after(seq, 0)
        added = {seq: c for seq, c in wanted.items() if seq not in kept}
        if self.model.info.is_clm:
            for seq, coefficient in added.items():
                self.model.set_alpha(seq, coefficient)
        keep = min(_common_prefix(self.cached, tokens), len(tokens) - 1)
        for seq in kept:
            self.model.forget_after(seq, keep)
        del self.cached[keep:]
        if added and keep:  # the new sequence catches up with the kept ones
            for seq in added:
                self.model.forget_after(seq, 0)
            self.model.decode({seq: self.cached for seq in added})
        self.coefficients = wanted
        return self._decode(tokens[keep:], alpha)

    def step(self, token: int, alpha: float) -> np.ndarray:
        """Append one token to the cache and return the logits after it (mixed by alpha)."""
        if len(self.cached) >= self.n_ctx:
            raise ClmError(f"the context is full ({self.n_ctx} tokens)")
        if self.is_stale:
            raise ClmError(
                "the model was used by something else during this generation (model.logits, another "
                "Decoder or ChatSession): its cache no longer holds this answer; ask again"
            )
        return self._decode([token], alpha)

    def _decode(self, tokens: list[int], alpha: float) -> np.ndarray:
        """Decode `tokens` on every sequence; with the pair, the aligned one's logits mixed by alpha."""
        by_coefficient = {coefficient: seq for seq, coefficient in self.coefficients.items()}
        if len(self.coefficients) == 2:
            shown = by_coefficient[1.0]
            mix = {shown: (by_coefficient[0.0], alpha)}
        else:
            (shown,), mix = self.coefficients, None
        rows = self.model.decode({seq: tokens for seq in self.coefficients}, mix=mix)
        self._version = self.model.cache_version
        self.cached += tokens
        return rows[shown][-1]

    def generate(
        self,
        prompt_tokens: Sequence[int],
        alpha: float | None = None,
        mode: str | None = None,
        sampling: SamplingParams | None = None,
        max_tokens: int = 256,
        *,
        stop_at_end: bool = True,
    ) -> Iterator[int]:
        """Yield up to max_tokens new tokens after the prompt; stops before an end-of-generation
        token and when the context is full. alpha and mode default to the file's clm.* keys.
        stop_at_end=False yields end-of-generation tokens like any other, so that a benchmark
        times exactly max_tokens tokens of this same loop.

        A token is yielded before it is decoded, so a consumer that stops early leaves the cache
        exactly at the tokens decoded so far (the prompt and all but the last yielded token).
        """
        info = self.model.info
        alpha = check_alpha(info.alpha_default if alpha is None else alpha)
        mode = check_mode(info.mix_default if mode is None else mode)
        if not info.is_clm and not self._warned_plain:
            warnings.warn(f"{info.path} has no CLM pre-layer: alpha has no effect", stacklevel=2)
            self._warned_plain = True
        self.hit_max_tokens = False
        if max_tokens < 1:
            return
        with Sampler(self.model.n_vocab, sampling or SamplingParams()) as sampler:
            logits = self.prefill(prompt_tokens, alpha, mode)
            for produced in range(1, max_tokens + 1):
                token = sampler.sample(logits)
                if stop_at_end and self.model.is_end_of_generation(token):
                    return
                self.hit_max_tokens = produced == max_tokens
                yield token
                if produced == max_tokens or len(self.cached) >= self.n_ctx:
                    return
                logits = self.step(token, alpha)


def generate(
    model: ClmModel,
    prompt_tokens: Sequence[int],
    alpha: float | None = None,
    mode: str | None = None,
    sampling: SamplingParams | None = None,
    max_tokens: int = 256,
) -> Iterator[int]:
    """Generate from an empty cache: `Decoder(model).generate(...)`. See Decoder.generate."""
    return Decoder(model).generate(prompt_tokens, alpha, mode, sampling, max_tokens)


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n
