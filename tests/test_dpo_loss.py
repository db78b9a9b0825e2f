import math

import pytest
import torch

from ha_dpo.objective.dpo_loss import PairLogps, preference_loss


def ha_dpo_reference(policy_chosen, policy_rejected, reference_chosen, reference_rejected, beta):
    """HA-DPO's dpo_loss, restated: per-pair losses and rewards."""
    logits = (policy_chosen - policy_rejected) - (reference_chosen - reference_rejected)
    losses = [-math.log(1 / (1 + math.exp(-beta * value))) for value in logits.tolist()]
    chosen_rewards = [beta * value for value in (policy_chosen - reference_chosen).tolist()]
    rejected_rewards = [beta * value for value in (policy_rejected - reference_rejected).tolist()]
    return losses, chosen_rewards, rejected_rewards


def random_logps(seed=0, batch=6):
    generator = torch.Generator().manual_seed(seed)
    values = [-30 * torch.rand(batch, generator=generator, dtype=torch.float64) for _ in range(4)]
    return PairLogps(*values, chosen_tokens=torch.randint(3, 20, (batch,), generator=generator))


@pytest.mark.parametrize("beta", [0.1, 0.5])
def test_sigmoid_loss_and_rewards_equal_ha_dpo(beta):
    logps = random_logps()
    loss, metrics = preference_loss(logps, beta)
    losses, chosen, rejected = ha_dpo_reference(
        logps.policy_chosen, logps.policy_rejected, logps.reference_chosen, logps.reference_rejected, beta
    )
    assert loss.item() == pytest.approx(sum(losses) / len(losses), rel=1e-12)
    assert metrics["rewards/chosen"].item() == pytest.approx(sum(chosen) / len(chosen), rel=1e-12)
    assert metrics["rewards/rejected"].item() == pytest.approx(sum(rejected) / len(rejected), rel=1e-12)
    accuracy = sum(c > r for c, r in zip(chosen, rejected)) / len(chosen)
    assert metrics["rewards/accuracies"].item() == pytest.approx(accuracy)
    margins = sum(c - r for c, r in zip(chosen, rejected)) / len(chosen)
    assert metrics["rewards/margins"].item() == pytest.approx(margins, rel=1e-12)
    assert metrics["logps/chosen"].item() == pytest.approx(logps.policy_chosen.mean().item())
    assert metrics["ref_logps/rejected"].item() == pytest.approx(logps.reference_rejected.mean().item())


def test_policy_equal_to_reference_gives_ln2_and_zero_rewards():
    logps = random_logps()
    same = PairLogps(
        logps.policy_chosen, logps.policy_rejected, logps.policy_chosen, logps.policy_rejected, logps.chosen_tokens
    )
    loss, metrics = preference_loss(same, beta=0.1)
    assert loss.item() == pytest.approx(math.log(2), abs=1e-12)
    assert metrics["rewards/chosen"].item() == 0 and metrics["rewards/margins"].item() == 0


def test_ipo_hinge_and_the_sft_term():
    logps = random_logps(1)
    margin = (logps.policy_chosen - logps.policy_rejected) - (logps.reference_chosen - logps.reference_rejected)
    ipo, _ = preference_loss(logps, beta=0.2, loss_type="ipo")
    assert ipo.item() == pytest.approx(((margin - 2.5) ** 2).mean().item())
    hinge, _ = preference_loss(logps, beta=0.2, loss_type="hinge")
    assert hinge.item() == pytest.approx(torch.clamp(1 - 0.2 * margin, min=0).mean().item())
    plain, _ = preference_loss(logps, beta=0.2)
    with_sft, _ = preference_loss(logps, beta=0.2, gamma=0.5)
    sft = (-logps.policy_chosen / logps.chosen_tokens).mean().item()
    assert with_sft.item() == pytest.approx(plain.item() + 0.5 * sft)
    with pytest.raises(ValueError, match="unknown loss_type 'kto'"):
        preference_loss(logps, beta=0.2, loss_type="kto")
