"""Preference losses on sequence log-probabilities, with the metric names HA-DPO and TRL users know.

sigmoid (HA-DPO, DPO):  -log sigmoid(beta * ((pi_c - pi_r) - (ref_c - ref_r)))
ipo (Azar et al.):       ((pi_c - pi_r) - (ref_c - ref_r) - 1 / (2 beta))^2
hinge (SLiC):            max(0, 1 - beta * ((pi_c - pi_r) - (ref_c - ref_r)))
Rewards are beta * (policy - reference) log-probs. `gamma` adds an SFT term: gamma times the
chosen answer's mean per-token negative log-likelihood under the policy.
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F

LOSS_TYPES = ("sigmoid", "ipo", "hinge")


@dataclass
class PairLogps:
    """Sums of log-probabilities over each answer's tokens, [B] each, plus what the metrics need."""

    policy_chosen: torch.Tensor
    policy_rejected: torch.Tensor
    reference_chosen: torch.Tensor
    reference_rejected: torch.Tensor
    chosen_tokens: torch.Tensor  # [B] answer lengths (for the SFT term)
    policy_chosen_mean_logit: torch.Tensor | None = None  # scalars, as HA-DPO logs them
    policy_rejected_mean_logit: torch.Tensor | None = None

    @classmethod
    def from_interleaved(cls, policy, reference, mean_logits, chosen_tokens) -> "PairLogps":
        """From [2B] rows ordered chosen_0, rejected_0, chosen_1, ... (how both log-prob paths run pairs)."""
        return cls(
            policy_chosen=policy[0::2],
            policy_rejected=policy[1::2],
            reference_chosen=reference[0::2],
            reference_rejected=reference[1::2],
            chosen_tokens=chosen_tokens,
            policy_chosen_mean_logit=mean_logits[0::2].mean(),
            policy_rejected_mean_logit=mean_logits[1::2].mean(),
        )


def preference_loss(logps: PairLogps, beta: float, loss_type: str = "sigmoid", gamma: float = 0.0):
    """Returns (loss, metrics); metrics are detached scalars named as HA-DPO/TRL log them."""
    if loss_type not in LOSS_TYPES:
        raise ValueError(f"unknown loss_type {loss_type!r}; choose one of {', '.join(LOSS_TYPES)}")
    margin = (logps.policy_chosen - logps.policy_rejected) - (logps.reference_chosen - logps.reference_rejected)
    if loss_type == "sigmoid":
        losses = -F.logsigmoid(beta * margin)
    elif loss_type == "ipo":
        losses = (margin - 1 / (2 * beta)) ** 2
    else:
        losses = torch.relu(1 - beta * margin)
    loss = losses.mean()
    if gamma:
        loss = loss + gamma * (-logps.policy_chosen / logps.chosen_tokens).mean()

    chosen_rewards = beta * (logps.policy_chosen - logps.reference_chosen).detach()
    rejected_rewards = beta * (logps.policy_rejected - logps.reference_rejected).detach()
    metrics = {
        "rewards/chosen": chosen_rewards.mean(),
        "rewards/rejected": rejected_rewards.mean(),
        "rewards/accuracies": (chosen_rewards > rejected_rewards).float().mean(),
        "rewards/margins": (chosen_rewards - rejected_rewards).mean(),
        "logps/chosen": logps.policy_chosen.detach().mean(),
        "logps/rejected": logps.policy_rejected.detach().mean(),
        "ref_logps/chosen": logps.reference_chosen.detach().mean(),
        "ref_logps/rejected": logps.reference_rejected.detach().mean(),
    }
    if logps.policy_chosen_mean_logit is not None:
        metrics["logits/chosen"] = logps.policy_chosen_mean_logit
        metrics["logits/rejected"] = logps.policy_rejected_mean_logit
    return loss, metrics
