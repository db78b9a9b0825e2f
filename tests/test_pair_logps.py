import copy
import math

import pytest
import torch

from ha_dpo.objective.dpo_loss import preference_loss
from ha_dpo.objective.pair_logps import ReferenceHead, shared_pair_logps
from post_decoder import VARIANTS
from tests.helpers import add_noise, named, pad_rows, with_block
from tests.helpers.pairs import make_batch, tokenized_pairs


def full_sequence_logps(model, tokenizer, pixel_values, answers_index):
    """The usual recipe for one model: whole prompt + answer sequences (right-padded), logits over
    everything, then HA-DPO's _get_batch_logps (labels shifted, prompt and padding at -100)."""
    prompts, chosen, rejected = tokenized_pairs(model, tokenizer)
    answers = (chosen, rejected)[answers_index]
    rows = [p + a for p, a in zip(prompts, answers)]
    labels = [[-100] * len(p) + a for p, a in zip(prompts, answers)]
    input_ids, attention_mask = pad_rows(rows, "right", tokenizer.pad_token_id)
    labels, _ = pad_rows(labels, "right", -100)
    with torch.no_grad():
        logits = model(input_ids=input_ids, attention_mask=attention_mask, pixel_values=pixel_values).logits.float()
    labels, logits = labels[:, 1:].clone(), logits[:, :-1]
    mask = labels != -100
    labels[~mask] = 0
    token_logps = torch.gather(logits.log_softmax(-1), 2, labels.unsqueeze(2)).squeeze(2)
    return (token_logps * mask).sum(-1)


@pytest.mark.parametrize("variant", [None, *VARIANTS])
def test_shared_backbone_logps_equal_two_separate_models_on_full_sequences(plain_llava, llava_tokenizer, variant):
    model = copy.deepcopy(plain_llava) if variant is None else with_block(plain_llava, variant, perturb=0.1, seed=3)
    if variant is None:
        from post_decoder.families.llava import LlavaPostDecoderConfig, LlavaPostDecoderForConditionalGeneration

        model = LlavaPostDecoderForConditionalGeneration(LlavaPostDecoderConfig.from_llava_config(plain_llava.config))
        model.load_state_dict(plain_llava.state_dict())
        model.eval()
    reference_model = copy.deepcopy(model)
    reference = ReferenceHead.snapshot(model, copy_lm_head=True)
    if model.post_decoder is not None:
        add_noise(model.post_decoder, 0.2, seed=5)
    add_noise(model.lm_head, 0.05, seed=6)  # stage 2 trains lm_head too
    pixel_values = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))

    logps = shared_pair_logps(model, reference, make_batch(model, llava_tokenizer, pixel_values))
    expected = {
        "policy_chosen": full_sequence_logps(model, llava_tokenizer, pixel_values, 0),
        "policy_rejected": full_sequence_logps(model, llava_tokenizer, pixel_values, 1),
        "reference_chosen": full_sequence_logps(reference_model, llava_tokenizer, pixel_values, 0),
        "reference_rejected": full_sequence_logps(reference_model, llava_tokenizer, pixel_values, 1),
    }
    for name, values in expected.items():
        torch.testing.assert_close(getattr(logps, name), values, atol=1e-5, rtol=1e-5, msg=named(name))
    assert not torch.allclose(logps.policy_chosen, logps.reference_chosen, atol=1e-3)  # the heads really differ


@pytest.mark.parametrize("variant", VARIANTS)
def test_the_first_step_starts_at_ln2_with_zero_rewards_and_reaches_the_block(plain_llava, llava_tokenizer, variant):
    model = with_block(plain_llava, variant)  # a fresh block: identity, as at the start of stage 1
    reference = ReferenceHead.snapshot(model, copy_lm_head=False)
    model.requires_grad_(False)
    model.post_decoder.requires_grad_(True)
    pixel_values = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    logps = shared_pair_logps(model, reference, make_batch(model, llava_tokenizer, pixel_values))
    loss, metrics = preference_loss(logps, beta=0.1)
    assert loss.item() == pytest.approx(math.log(2), abs=1e-6)
    assert metrics["rewards/chosen"].item() == pytest.approx(0, abs=1e-6)
    assert metrics["rewards/margins"].item() == pytest.approx(0, abs=1e-6)
    loss.backward()
    gradients = [p.grad for p in model.post_decoder.parameters() if p.grad is not None and p.grad.abs().sum() > 0]
    assert gradients, "the zero-initialised block must still receive gradient on the first step"
    assert all(p.grad is None for p in model.model.parameters())


def ha_dpo_logits_metric(all_logits, labels, len_chosen):
    """HA-DPO's `logits/chosen` and `logits/rejected`, restated from ha_dpo/trainer/llava_dpo_trainer.py,
    LlavaDPOTrainer.concatenated_forward: rows are all chosen then all rejected, `labels` unshifted
    (-100 off the answers), each row's logits taken at `labels != -100` and averaged, then the rows
    summed and divided by the number of pairs."""
    loss_mask = labels != -100
    logits = [all_logits[i][loss_mask[i]] for i in range(loss_mask.shape[0])]
    chosen = [row.detach().mean() for row in logits[:len_chosen]]
    rejected = [row.detach().mean() for row in logits[len_chosen:]]
    return sum(chosen) / len_chosen, sum(rejected) / len_chosen


def full_sequence_logits_and_labels(model, tokenizer, pixel_values):
    """HA-DPO's concatenated batch for one model: chosen rows, then rejected rows, right-padded."""
    prompts, chosen, rejected = tokenized_pairs(model, tokenizer)
    answers = chosen + rejected
    rows = [p + a for p, a in zip(prompts + prompts, answers)]
    labels = [[-100] * len(p) + a for p, a in zip(prompts + prompts, answers)]
    input_ids, attention_mask = pad_rows(rows, "right", tokenizer.pad_token_id)
    labels, _ = pad_rows(labels, "right", -100)
    with torch.no_grad():
        logits = model(
            input_ids=input_ids, attention_mask=attention_mask, pixel_values=torch.cat([pixel_values, pixel_values])
        ).logits.float()
    return logits, labels


def test_logits_metrics_are_ha_dpos_on_both_log_prob_paths(plain_llava, llava_tokenizer):
    from ha_dpo.objective.full_sequence_logps import full_sequence_logps as lora_path_logps

    model = with_block(plain_llava, "post_interaction", perturb=0.1, seed=3)
    reference = ReferenceHead.snapshot(model, copy_lm_head=False)
    pixel_values = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    batch = make_batch(model, llava_tokenizer, pixel_values)
    expected_chosen, expected_rejected = ha_dpo_logits_metric(
        *full_sequence_logits_and_labels(model, llava_tokenizer, pixel_values), len_chosen=2
    )
    shared = shared_pair_logps(model, reference, batch)
    assert shared.policy_chosen_mean_logit.item() == pytest.approx(expected_chosen.item(), abs=1e-5)
    assert shared.policy_rejected_mean_logit.item() == pytest.approx(expected_rejected.item(), abs=1e-5)
    with torch.no_grad():
        _, mean_logits = lora_path_logps(model, batch, llava_tokenizer.pad_token_id)
    assert mean_logits[0::2].mean().item() == pytest.approx(expected_chosen.item(), abs=1e-5)
    assert mean_logits[1::2].mean().item() == pytest.approx(expected_rejected.item(), abs=1e-5)


class FixedLogits(torch.nn.Module):
    """A stand-in model, vocabulary 10, whose logit at (row, position, v) is 100 * row + 10 * position + v."""

    def forward(self, input_ids, attention_mask=None, pixel_values=None):
        rows, width = input_ids.shape
        logits = 100.0 * torch.arange(rows)[:, None, None] + 10.0 * torch.arange(width)[None, :, None]
        return type("Output", (), {"logits": logits + torch.arange(10.0)[None, None, :]})()


def test_full_sequence_logits_metric_averages_the_answer_tokens_own_positions():
    from ha_dpo.objective.full_sequence_logps import full_sequence_logps as lora_path_logps

    batch = {  # one pair: a 2-token prompt, a 3-token chosen and a 1-token rejected answer
        "prompt_input_ids": torch.tensor([[5, 6]]),
        "prompt_attention_mask": torch.tensor([[1, 1]]),
        "chosen_input_ids": torch.tensor([[7, 8, 2]]),
        "chosen_attention_mask": torch.tensor([[1, 1, 1]]),
        "rejected_input_ids": torch.tensor([[2, 0, 0]]),
        "rejected_attention_mask": torch.tensor([[1, 0, 0]]),
    }
    _, mean_logits = lora_path_logps(FixedLogits(), batch, pad_id=0)
    # A position's mean logit is 100 * row + 10 * t + 4.5. Chosen (row 0) sits at positions 2, 3, 4: 34.5;
    # rejected (row 1) at position 2: 124.5. (The positions predicting them, 1..3 and 1, would give 24.5, 114.5.)
    assert mean_logits.tolist() == [34.5, 124.5]


@pytest.mark.parametrize("path", ["shared", "full_sequence"])
def test_chosen_tokens_counts_the_chosen_answer_on_both_paths(plain_llava, llava_tokenizer, path):
    pytest.importorskip("peft")
    from ha_dpo.cli.arguments import ModelArguments
    from ha_dpo.trainer.training_model import preference_model

    model = with_block(plain_llava, "post_interaction", perturb=0.1)
    _, chosen, rejected = tokenized_pairs(model, llava_tokenizer)
    assert [len(c) for c in chosen] != [len(r) for r in rejected]  # the case where a mix-up would show
    flags = dict(tune_post_decoder=True) if path == "shared" else dict(lora_enable=True)
    wrapper = preference_model(ModelArguments("unused", **flags), model, llava_tokenizer)
    pixel_values = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    logps = wrapper(**make_batch(model, llava_tokenizer, pixel_values))
    assert logps.chosen_tokens.tolist() == [len(c) for c in chosen]
