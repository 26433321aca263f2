"""Sequence log-probabilities and the two objectives (DPO, SFT) on top of them."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint
from transformers import PreTrainedModel

from clm_local.training.data import Batch

# Auto chunk size of the LM head: as many answer tokens as fit this many bytes of float32 logits.
LOGITS_CHUNK_BYTES = 256 * 2**20
MIN_CHUNK_TOKENS = 64


def auto_chunk_tokens(vocab_size: int) -> int:
    """Answer tokens per LM-head chunk: 1365 at a 49k vocabulary, 523 at 128k (Llama 3)."""
    return max(MIN_CHUNK_TOKENS, LOGITS_CHUNK_BYTES // (4 * vocab_size))


def _token_logprobs(lm_head: nn.Module, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    logits = lm_head(hidden).float()
    return logits.log_softmax(-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)


def token_logprobs(
    lm_head: nn.Module, hidden: torch.Tensor, targets: torch.Tensor, chunk_tokens: int
) -> torch.Tensor:
    """log p(target) at each of the (tokens, hidden) positions, `chunk_tokens` positions at a time.

    A [tokens, vocab] float32 logits matrix is about 0.5 GB per 1000 tokens at a 128k vocabulary, and
    the plain backward keeps it (as the log-softmax output) until the end of the step. Each chunk
    runs inside a non-reentrant checkpoint, so only its hidden states are kept and the backward
    recomputes one chunk's logits at a time. One chunk (or `chunk_tokens` 0) is the plain path:
    no recompute, so small models pay nothing.
    """
    count = hidden.shape[0]
    if chunk_tokens <= 0 or count <= chunk_tokens:
        return _token_logprobs(lm_head, hidden, targets)
    keep_graph = torch.is_grad_enabled() and hidden.requires_grad
    pieces = []
    for start in range(0, count, chunk_tokens):
        span = slice(start, start + chunk_tokens)
        if keep_graph:
            pieces.append(
                checkpoint(_token_logprobs, lm_head, hidden[span], targets[span], use_reentrant=False)
            )
        else:
            pieces.append(_token_logprobs(lm_head, hidden[span], targets[span]))
    return torch.cat(pieces)


def response_logprobs(
    model: PreTrainedModel, batch: Batch, chunk_tokens: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed log-probability of each sequence's response tokens, and the response token counts.

    The LM head runs only on positions that predict a response token (prompts are often long and
    the vocabulary large, so full-sequence logits would dominate memory for no use), in chunks of
    `chunk_tokens` positions (0: all at once); see `token_logprobs`.
    """
    hidden = model.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False)
    # Position t predicts token t + 1.
    mask = batch.loss_mask[:, 1:]
    targets = batch.input_ids[:, 1:][mask]
    token_logps = token_logprobs(model.lm_head, hidden.last_hidden_state[:, :-1][mask], targets, chunk_tokens)
    rows = torch.arange(mask.shape[0], device=mask.device).unsqueeze(1).expand_as(mask)[mask]
    sums = torch.zeros(mask.shape[0], device=mask.device).index_add(0, rows, token_logps)
    return sums, mask.sum(dim=1)


def dpo_terms(
    policy_logps: torch.Tensor, reference_logps: torch.Tensor, beta: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-pair DPO losses and implicit rewards (chosen, rejected).

    Both inputs are (2, pairs): row 0 chosen, row 1 rejected. The reward of a response is
    beta * (log pi - log ref); the loss is -log sigmoid(reward_chosen - reward_rejected).
    """
    rewards = beta * (policy_logps - reference_logps)
    losses = -F.logsigmoid(rewards[0] - rewards[1])
    return losses, rewards[0].detach(), rewards[1].detach()
