"""Turn a base model into a CLM model: one identity pre-layer P in front of block 0 (see CLM.md).

P is a copy of block 0 whose two residual branches are made to add exact zeros, so P(x) == x until
it is trained (`identity_initialise`, per family). It sits at `model.layers.0`, the base blocks
move to 1..N, and each block's attention `layer_idx` is renumbered so every block keeps its own
KV-cache slot. The expanded model is therefore exactly the authors' published HF layout
(`num_hidden_layers` = N + 1), and `model.layers.0.*` are P's tensors under the base's names.

The DPO reference is the same network with P bypassed (`bypass_pre_layer`), not a second copy.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager

import torch
from torch import nn
from transformers import PreTrainedModel

from clm_local.errors import ClmError

PRE_LAYER_PREFIX = "model.layers.0."

# Relative tolerance of the identity check per compute dtype. P adds exact zeros, so the two
# passes normally agree bit for bit; the slack only absorbs kernels that are not deterministic.
IDENTITY_TOLERANCE = {torch.float32: 1e-5, torch.bfloat16: 1e-2, torch.float16: 1e-2}


def decoder_layers(model: PreTrainedModel) -> nn.ModuleList:
    """The block list of a causal LM of a supported family (`model.model.layers` in each)."""
    return model.model.layers


# Gemma 2/3 blocks end each residual branch with an RMSNorm (HF weight w, gain 1 + w). Llama-style
# blocks also have a `post_attention_layernorm`, but it is their pre-FFN norm: the FFN post-norm is
# what tells a post-norm block apart.
_POST_NORMS = ("post_attention_layernorm", "post_feedforward_layernorm")


def identity_initialise(block: nn.Module) -> None:
    """Make both residual branches of a copied block add exact zeros, so the block is the identity.

    Pre-norm blocks (llama, qwen2, qwen3, phi3): zero the projections that write into the residual
    stream (`o_proj`, `down_proj`; phi3's names are the same). Blocks with post-norms (Gemma 2/3):
    zeroing the projections would leave the post-norm to blow the first tiny update up to unit size
    (its gain grows as 1/sqrt(eps)); instead the post-norms' gains are zeroed (HF weight -1, stored
    as 0 in GGUF) and the projections kept, so training starts from a well-conditioned branch whose
    output grows with the gain.
    """
    with torch.no_grad():
        if hasattr(block, "post_feedforward_layernorm"):
            for name in _POST_NORMS:
                getattr(block, name).weight.fill_(-1.0)  # Gemma's RMSNorm: x * (1 + w) = 0
            return
        for projection in (block.self_attn.o_proj, block.mlp.down_proj):
            projection.weight.zero_()
            if projection.bias is not None:
                projection.bias.zero_()


def insert_pre_layer(model: PreTrainedModel) -> nn.Module:
    """Insert P (an identity copy of block 0) in front of block 0; freeze everything else.

    P's parameters are kept in float32 whatever the base dtype, so small Adam updates are not
    rounded away in bf16; autocast runs its matmuls in the compute dtype.
    """
    layers = decoder_layers(model)
    pre_layer = copy.deepcopy(layers[0]).float()
    identity_initialise(pre_layer)
    layers.insert(0, pre_layer)
    for index, layer in enumerate(layers):
        for module in layer.modules():
            if hasattr(module, "layer_idx"):
                module.layer_idx = index

    config = model.config
    config.num_hidden_layers = len(layers)
    if getattr(config, "layer_types", None):
        config.layer_types = [config.layer_types[0], *config.layer_types]
    if getattr(config, "max_window_layers", None) is not None:
        # Qwen2: blocks from this index on use sliding attention; the base blocks moved up by one.
        config.max_window_layers += 1

    model.requires_grad_(False)
    pre_layer.requires_grad_(True)
    return pre_layer


def pre_layer_of(model: PreTrainedModel) -> nn.Module:
    """P, once `insert_pre_layer` has run."""
    return decoder_layers(model)[0]


class _Passthrough(nn.Module):
    """Stands in for P while bypassed: returns the hidden states unchanged."""

    def forward(self, hidden_states: torch.Tensor, *args: object, **kwargs: object) -> torch.Tensor:
        return hidden_states


@contextmanager
def replaced_pre_layer(model: PreTrainedModel, replacement: nn.Module) -> Iterator[None]:
    """Temporarily put `replacement` where P is (P itself is restored afterwards)."""
    layers = decoder_layers(model)
    pre_layer = layers[0]
    layers[0] = replacement
    try:
        yield
    finally:
        layers[0] = pre_layer


def bypass_pre_layer(model: PreTrainedModel) -> AbstractContextManager[None]:
    """Run the model as the base (the DPO reference path): P is swapped out for a passthrough."""
    return replaced_pre_layer(model, _Passthrough())


@torch.no_grad()
def cached_logits(model: PreTrainedModel, input_ids: torch.Tensor) -> torch.Tensor:
    """Logits for `input_ids` computed as a generator would: prefill all but the last token, then
    one cached step. A block reading another block's KV-cache slot makes the last step differ."""
    prefill = model(input_ids=input_ids[:, :-1], use_cache=True)
    step = model(input_ids=input_ids[:, -1:], cache=prefill.cache, use_cache=True)
    return torch.cat([prefill.logits, step.logits], dim=1).float()


def check_identity(model: PreTrainedModel, base_logits: torch.Tensor, input_ids: torch.Tensor) -> float:
    """Stop unless the model with a fresh P reproduces the base's logits; return the largest deviation."""
    logits = cached_logits(model, input_ids)
    deviation = (logits - base_logits).abs().max().item()
    scale = max(1.0, base_logits.abs().max().item())
    tolerance = IDENTITY_TOLERANCE[next(model.lm_head.parameters()).dtype] * scale
    if not deviation <= tolerance:  # also catches NaN
        raise ClmError(
            "the model with the pre-layer does not reproduce the base model "
            f"(logits differ by {deviation:.3g}, tolerance {tolerance:.3g}); this base is not supported"
        )
    return deviation


def pre_layer_state(model: PreTrainedModel) -> dict[str, torch.Tensor]:
    """P's tensors, named as the base's block 0 in HF form (`model.layers.0.self_attn.q_proj.weight`)."""
    return {
        PRE_LAYER_PREFIX + name: tensor.detach().contiguous().cpu()
        for name, tensor in pre_layer_of(model).state_dict().items()
    }


def load_pre_layer_state(model: PreTrainedModel, tensors: dict[str, torch.Tensor]) -> None:
    """Copy saved P tensors (as written by `pre_layer_state`) into the model's P."""
    expected = pre_layer_state(model)
    if set(tensors) != set(expected) or any(tensors[k].shape != expected[k].shape for k in expected):
        raise ClmError("the saved pre-layer does not fit this base model (different tensor names or shapes)")
    pre_layer_of(model).load_state_dict(
        {name.removeprefix(PRE_LAYER_PREFIX): t for name, t in tensors.items()}
    )
