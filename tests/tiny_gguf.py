"""Small random GGUF models in the CLM layout, for tests that must not download anything.

A TinyModel keeps its F32 weights in memory under their GGUF names, so the same weights can be
written in three layouts (see CLM.md, "The GGUF file") and fed to the numpy reference:

- "clm":            blk.0 = P, blk.1..N = base blocks, block_count = N+1, clm.* keys;
- "base":           the N base blocks renumbered 0..N-1, no P, no clm.* keys (the a=0 model);
- "plain_expanded": the "clm" tensors without the clm.* keys: what a stock llama.cpp sees (a=1).

The files carry `tokenizer.ggml.model = "none"` plus `{arch}.vocab_size`, which llama.cpp loads
as a vocabulary of dummy tokens (src/llama-vocab.cpp): tests feed token ids, never text.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

import gguf
import numpy as np

from clm_local.gguf import keys as gguf_keys

Arch = Literal["llama", "qwen2"]
Variant = Literal["clm", "base", "plain_expanded"]
VARIANTS: tuple[Variant, ...] = ("clm", "base", "plain_expanded")

# Scale of P's residual-branch outputs (attn_output, ffn_down). Large enough that alpha moves the
# logits far beyond the runtime tests' 1e-2 tolerance, small enough that P stays a perturbation
# of the residual stream as a trained pre-layer is.
P_OUT_STD = 0.05

# GGUF block tensor -> Hugging Face module inside `model.layers.<i>.` (llama and qwen2).
HF_BLOCK_MODULES = {
    "attn_norm": "input_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_norm": "post_attention_layernorm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}


@dataclass(frozen=True)
class TinyConfig:
    """Hyperparameters of a tiny model. GQA (n_head_kv < n_head) is on by default on purpose."""

    arch: Arch
    n_vocab: int = 96
    n_embd: int = 64
    n_head: int = 4
    n_head_kv: int = 2
    n_ff: int = 128
    n_ctx: int = 256
    rope_theta: float = 10000.0
    rms_eps: float = 1e-5

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @property
    def neox_rope(self) -> bool:
        """llama.cpp's rope mode for the arch (llama_model_rope_type): LLAMA is NORM, QWEN2 NEOX.

        NORM rotates adjacent pairs (x0, x1), (x2, x3), ...; NEOX rotates x[i] with x[i + d/2].
        """
        return self.arch == "qwen2"

    @property
    def has_qkv_bias(self) -> bool:
        return self.arch == "qwen2"


@dataclass
class TinyModel:
    """Weights and metadata of a tiny model; `tensors` uses the GGUF names of the "clm" layout.

    With pre_layers=1, `blk.0.*` is P and `blk.1..N.*` the base blocks; with pre_layers=0 there is
    no P and `blk.0..N-1.*` are the base blocks. Arrays are float32 in numpy (out, in) order.
    """

    config: TinyConfig
    n_base_blocks: int
    pre_layers: int
    tensors: dict[str, np.ndarray]
    clm_keys: bool = True
    alpha_default: float | None = 1.0
    mix_default: str | None = "logits"
    name: str = "clm-tiny"

    def block(self, index: int) -> dict[str, np.ndarray]:
        """Tensors of `blk.{index}` in the "clm" layout, keyed by the part after `blk.{index}.`."""
        prefix = f"blk.{index}."
        return {k.removeprefix(prefix): v for k, v in self.tensors.items() if k.startswith(prefix)}

    @property
    def pre_layer(self) -> dict[str, np.ndarray]:
        if self.pre_layers == 0:
            raise ValueError("this tiny model has no pre-layer")
        return self.block(0)

    @property
    def base_blocks(self) -> list[dict[str, np.ndarray]]:
        return [self.block(self.pre_layers + i) for i in range(self.n_base_blocks)]

    def variant_tensors(self, variant: Variant) -> dict[str, np.ndarray]:
        """The tensors a file of `variant` holds, under the names that variant gives them."""
        if variant not in VARIANTS:
            raise ValueError(f"unknown variant {variant!r}; expected one of {VARIANTS}")
        if variant != "base" or self.pre_layers == 0:
            return dict(self.tensors)
        out: dict[str, np.ndarray] = {}
        for name, array in self.tensors.items():
            if not name.startswith("blk."):
                out[name] = array
                continue
            _, index, rest = name.split(".", 2)
            if int(index) >= self.pre_layers:
                out[f"blk.{int(index) - self.pre_layers}.{rest}"] = array
        return out

    def block_count(self, variant: Variant) -> int:
        return self.n_base_blocks + (0 if variant == "base" else self.pre_layers)

    def write(self, path: str | Path, variant: Variant = "clm") -> Path:
        """Write the model as a GGUF file of `variant`; the clm.* keys only go into "clm"."""
        path = Path(path)
        cfg = self.config
        writer = gguf.GGUFWriter(path, cfg.arch)  # also writes general.architecture
        writer.add_name(f"{self.name}-{variant}")
        writer.add_file_type(gguf.LlamaFileType.ALL_F32)
        writer.add_block_count(self.block_count(variant))
        writer.add_context_length(cfg.n_ctx)
        writer.add_embedding_length(cfg.n_embd)
        writer.add_feed_forward_length(cfg.n_ff)
        writer.add_head_count(cfg.n_head)
        writer.add_head_count_kv(cfg.n_head_kv)
        writer.add_layer_norm_rms_eps(cfg.rms_eps)
        writer.add_rope_freq_base(cfg.rope_theta)
        writer.add_rope_dimension_count(cfg.head_dim)
        writer.add_vocab_size(cfg.n_vocab)
        writer.add_tokenizer_model("none")
        if variant == "clm" and self.clm_keys and self.pre_layers > 0:
            writer.add_uint32(gguf_keys.KEY_VERSION, gguf_keys.CLM_VERSION)
            writer.add_uint32(gguf_keys.KEY_PRE_LAYER_COUNT, self.pre_layers)
            if self.alpha_default is not None:
                writer.add_float32(gguf_keys.KEY_ALPHA_DEFAULT, self.alpha_default)
            if self.mix_default is not None:
                writer.add_string(gguf_keys.KEY_MIX_DEFAULT, self.mix_default)
        for name, array in self.variant_tensors(variant).items():
            writer.add_tensor(name, array)  # numpy (out, in) becomes ggml ne = [in, out]
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        return path


def _random_block(rng: np.random.Generator, cfg: TinyConfig, out_std: float) -> dict[str, np.ndarray]:
    """One transformer block; `out_std` scales attn_output and ffn_down, the residual writers."""
    d, d_kv, ff = cfg.n_embd, cfg.n_head_kv * cfg.head_dim, cfg.n_ff

    def normal(shape: tuple[int, ...], std: float) -> np.ndarray:
        return rng.normal(0.0, std, size=shape).astype(np.float32)

    # Norm weights away from 1 so that a runtime ignoring them would fail the comparison.
    block = {
        "attn_norm.weight": 1.0 + normal((d,), 0.1),
        "attn_q.weight": normal((d, d), d**-0.5),
        "attn_k.weight": normal((d_kv, d), d**-0.5),
        "attn_v.weight": normal((d_kv, d), d**-0.5),
        "attn_output.weight": normal((d, d), out_std),
        "ffn_norm.weight": 1.0 + normal((d,), 0.1),
        "ffn_gate.weight": normal((ff, d), d**-0.5),
        "ffn_up.weight": normal((ff, d), d**-0.5),
        "ffn_down.weight": normal((d, ff), out_std),
    }
    if cfg.has_qkv_bias:
        block["attn_q.bias"] = normal((d,), 0.1)
        block["attn_k.bias"] = normal((d_kv,), 0.1)
        block["attn_v.bias"] = normal((d_kv,), 0.1)
    return block


def _identity_pre_layer(base_block_0: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """P at CLM initialisation: a copy of base block 0 whose residual writers are zero (P(x) == x)."""
    block = {k: v.copy() for k, v in base_block_0.items()}
    block["attn_output.weight"][:] = 0.0
    block["ffn_down.weight"][:] = 0.0
    return block


def _trained_pre_layer(
    rng: np.random.Generator, cfg: TinyConfig, base_block_0: dict[str, np.ndarray]
) -> dict[str, np.ndarray]:
    """P as training leaves it: its input projections (those converters/layout_check.py compares)
    base block 0's moved by 10%, its norms, biases and residual writers (zero at initialisation) new."""
    from clm_local.converters.layout_check import COMPARED_PARTS

    block = _random_block(rng, cfg, out_std=P_OUT_STD)
    for name in COMPARED_PARTS:
        if name in block:
            block[name] = base_block_0[name] + 0.1 * block[name]
    return block


def make_tiny_model(
    arch: Arch,
    *,
    n_base_blocks: int = 2,
    pre_layers: int = 1,
    clm_keys: bool = True,
    alpha_default: float | None = 1.0,
    mix_default: str | None = "logits",
    seed: int = 0,
    with_p_random: bool = True,
    **hparams: int | float,
) -> TinyModel:
    """Build a random tiny model in memory; `hparams` override TinyConfig fields (n_embd=32, ...).

    The base weights are drawn before P, so for one seed the base model is the same whatever
    `pre_layers` and `with_p_random` are. `with_p_random=False` gives the identity P of CLM.md.
    None for alpha_default / mix_default leaves that key out of the file.
    """
    if pre_layers not in (0, 1):
        raise ValueError("CLM uses one pre-layer; pre_layers must be 0 or 1")
    cfg = replace(TinyConfig(arch=arch), **hparams)
    if cfg.n_embd % cfg.n_head or cfg.n_head % cfg.n_head_kv or cfg.head_dim % 2:
        raise ValueError(f"inconsistent head sizes in {cfg}")
    rng = np.random.default_rng(seed)
    d = cfg.n_embd
    tensors = {
        "token_embd.weight": rng.normal(0.0, 1.0, size=(cfg.n_vocab, d)).astype(np.float32),
        "output_norm.weight": (1.0 + rng.normal(0.0, 0.1, size=d)).astype(np.float32),
        "output.weight": rng.normal(0.0, d**-0.5, size=(cfg.n_vocab, d)).astype(np.float32),
    }
    # Base blocks write to the residual stream at a normal scale: 1/sqrt(fan_in) halved.
    base = [_random_block(rng, cfg, out_std=0.5 * d**-0.5) for _ in range(n_base_blocks)]
    blocks = base
    if pre_layers:
        p = _trained_pre_layer(rng, cfg, base[0]) if with_p_random else _identity_pre_layer(base[0])
        blocks = [p, *base]
    for i, block in enumerate(blocks):
        tensors.update({f"blk.{i}.{k}": v for k, v in block.items()})
    return TinyModel(
        config=cfg,
        n_base_blocks=n_base_blocks,
        pre_layers=pre_layers,
        tensors=tensors,
        clm_keys=clm_keys,
        alpha_default=alpha_default,
        mix_default=mix_default,
    )
