import copy
import math

import pytest
import torch

from ha_dpo.dpo_loss import preference_loss
from ha_dpo.pair_logps import ReferenceHead, shared_pair_logps
from post_decoder import VARIANTS
from post_decoder.conversation import question_prompt, tokenize_with_image
from tests.conftest import add_noise, pad_rows, with_block

PAIRS = [
    ("Is there a dog in the image?", "Yes, there is a dog.", "No."),
    ("Describe the image in detail.", "The image shows a red circle next to a blue square.", "There are two cups on a table."),
]


def tokenized_pairs(model, tokenizer):
    config = model.config
    prompts, chosen, rejected = [], [], []
    for question, good, bad in PAIRS:
        prompts.append(tokenize_with_image(question_prompt(question), tokenizer, config.image_token_id, config.image_seq_length))
        chosen.append(tokenizer(good).input_ids[1:] + [tokenizer.eos_token_id])
        rejected.append(tokenizer(bad).input_ids[1:] + [tokenizer.eos_token_id])
    return prompts, chosen, rejected


def make_batch(model, tokenizer, pixel_values):
    prompts, chosen, rejected = tokenized_pairs(model, tokenizer)
    pad = tokenizer.pad_token_id
    batch = {"pixel_values": pixel_values}
    batch["prompt_input_ids"], batch["prompt_attention_mask"] = pad_rows(prompts, "left", pad)
    batch["chosen_input_ids"], batch["chosen_attention_mask"] = pad_rows(chosen, "right", pad)
    batch["rejected_input_ids"], batch["rejected_attention_mask"] = pad_rows(rejected, "right", pad)
    return batch


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
        from post_decoder import LlavaPostDecoderConfig, LlavaPostDecoderForConditionalGeneration

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
        assert torch.allclose(getattr(logps, name), values, atol=1e-5), name
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
