"""Sequence log-probabilities and the two objectives (DPO, SFT) on top of them."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers import PreTrainedModel

from clm_local.training.data import Batch


def response_logprobs(model: PreTrainedModel, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed log-probability of each sequence's response tokens, and the response token counts.

    The LM head runs only on positions that predict a response token: prompts are often long and
    the vocabulary large, so full-sequence logits would dominate memory for no use.
    """
    hidden = model.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False)
    # Position t predicts token t + 1.
    mask = batch.loss_mask[:, 1:]
    logits = model.lm_head(hidden.last_hidden_state[:, :-1][mask]).float()
    targets = batch.input_ids[:, 1:][mask]
    token_logps = logits.log_softmax(-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
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
