"""An independent float64 numpy forward pass over a TinyModel: the oracle for the runtime tests.

It shares no code with the runtime and reads weights in GGUF order, applying rope the way
llama.cpp does for the arch (tests/test_reference_fixtures.py checks it against transformers).
CLM blending, as in CLM.md:

- "logits": z = alpha * z(e -> P -> blocks) + (1 - alpha) * z(e -> blocks)
- "embed":  h = e + alpha * (P(e) - e), then the base blocks
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
from tiny_gguf import TinyConfig, TinyModel

Mode = Literal["logits", "embed"]
Weights = dict[str, np.ndarray]


def relative_error(a: np.ndarray, b: np.ndarray) -> float:
    """max|a - b| / max|b|: scale-free, and not blown up by logits that happen to be near zero."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


def rms_norm(x: np.ndarray, weight: np.ndarray, eps: float) -> np.ndarray:
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * weight


def rope(x: np.ndarray, theta: float, neox: bool) -> np.ndarray:
    """Rotate x (T, heads, head_dim) by position, pairing dims as llama.cpp's rope mode does."""
    n_pos, _, dim = x.shape
    freqs = theta ** (-np.arange(0, dim, 2) / dim)  # (dim/2,)
    angle = np.arange(n_pos)[:, None, None] * freqs  # (T, 1, dim/2)
    cos, sin = np.cos(angle), np.sin(angle)
    if neox:  # NEOX: x[i] with x[i + dim/2]
        x0, x1 = x[..., : dim // 2], x[..., dim // 2 :]
        return np.concatenate([x0 * cos - x1 * sin, x0 * sin + x1 * cos], axis=-1)
    x0, x1 = x[..., 0::2], x[..., 1::2]  # NORM: adjacent pairs
    out = np.empty_like(x)
    out[..., 0::2] = x0 * cos - x1 * sin
    out[..., 1::2] = x0 * sin + x1 * cos
    return out


def attention(x: np.ndarray, w: Weights, cfg: TinyConfig) -> np.ndarray:
    """Causal self-attention with GQA: query head h reads kv head h // (n_head / n_head_kv)."""
    n_pos, hd = x.shape[0], cfg.head_dim
    q = x @ w["attn_q.weight"].T + w.get("attn_q.bias", 0.0)
    k = x @ w["attn_k.weight"].T + w.get("attn_k.bias", 0.0)
    v = x @ w["attn_v.weight"].T + w.get("attn_v.bias", 0.0)
    q = rope(q.reshape(n_pos, cfg.n_head, hd), cfg.rope_theta, cfg.neox_rope)
    k = rope(k.reshape(n_pos, cfg.n_head_kv, hd), cfg.rope_theta, cfg.neox_rope)
    v = v.reshape(n_pos, cfg.n_head_kv, hd)
    group = cfg.n_head // cfg.n_head_kv
    k, v = np.repeat(k, group, axis=1), np.repeat(v, group, axis=1)
    scores = np.einsum("qhd,khd->hqk", q, k) / np.sqrt(hd)
    scores = np.where(np.tril(np.ones((n_pos, n_pos), dtype=bool)), scores, -np.inf)
    probs = np.exp(scores - scores.max(axis=-1, keepdims=True))
    probs /= probs.sum(axis=-1, keepdims=True)
    out = np.einsum("hqk,khd->qhd", probs, v).reshape(n_pos, cfg.n_head * hd)
    return out @ w["attn_output.weight"].T


def mlp(x: np.ndarray, w: Weights) -> np.ndarray:
    """SwiGLU: down(silu(gate(x)) * up(x))."""
    gate = x @ w["ffn_gate.weight"].T
    up = x @ w["ffn_up.weight"].T
    return (gate / (1.0 + np.exp(-gate)) * up) @ w["ffn_down.weight"].T


def block(h: np.ndarray, w: Weights, cfg: TinyConfig) -> np.ndarray:
    """Pre-norm transformer block: two residual branches."""
    h = h + attention(rms_norm(h, w["attn_norm.weight"], cfg.rms_eps), w, cfg)
    return h + mlp(rms_norm(h, w["ffn_norm.weight"], cfg.rms_eps), w)


def _f64(weights: Weights) -> Weights:
    return {k: v.astype(np.float64) for k, v in weights.items()}


def _embed(model: TinyModel, tokens: Sequence[int] | np.ndarray) -> np.ndarray:
    tokens = np.asarray(tokens, dtype=np.int64)
    if tokens.ndim != 1 or len(tokens) == 0:
        raise ValueError("tokens must be a non-empty 1-D sequence of ids")
    return model.tensors["token_embd.weight"].astype(np.float64)[tokens]


def _blocks_and_head(model: TinyModel, h: np.ndarray) -> np.ndarray:
    """The N base blocks, the final norm and the output head: (T, n_embd) -> logits (T, n_vocab)."""
    cfg = model.config
    for w in model.base_blocks:
        h = block(h, _f64(w), cfg)
    h = rms_norm(h, model.tensors["output_norm.weight"].astype(np.float64), cfg.rms_eps)
    return h @ model.tensors["output.weight"].astype(np.float64).T


def forward_plain(model: TinyModel, tokens: Sequence[int] | np.ndarray, use_pre_layer: bool) -> np.ndarray:
    """Logits (T, n_vocab) of one path: e -> [P ->] base blocks -> norm -> head (float64)."""
    h = _embed(model, tokens)
    if use_pre_layer:
        h = block(h, _f64(model.pre_layer), model.config)
    return _blocks_and_head(model, h)


def forward(
    model: TinyModel, tokens: Sequence[int] | np.ndarray, alpha: float, mode: Mode = "logits"
) -> np.ndarray:
    """CLM logits (T, n_vocab) for every position at coefficient `alpha` (float64)."""
    if mode == "logits":
        aligned = forward_plain(model, tokens, use_pre_layer=True)
        reference = forward_plain(model, tokens, use_pre_layer=False)
        return alpha * aligned + (1.0 - alpha) * reference
    if mode == "embed":
        e = _embed(model, tokens)
        p = block(e, _f64(model.pre_layer), model.config)
        return _blocks_and_head(model, e + alpha * (p - e))
    raise ValueError(f"unknown mode {mode!r}; expected 'logits' or 'embed'")
