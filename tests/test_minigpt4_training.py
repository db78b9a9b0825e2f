"""DPO on MiniGPT-4: the shared-backbone log-probs equal two separate models on full sequences, the first loss is
ln 2 with the gradient reaching the block only, and an optimiser step leaves the backbone bit-identical."""

import copy
import math

import pytest
import torch

from ha_dpo.data.preference_data import prompt_and_answer_ids
from ha_dpo.objective.dpo_loss import preference_loss
from ha_dpo.objective.pair_logps import ReferenceHead, shared_pair_logps
from post_decoder import VARIANTS
from post_decoder.families.minigpt4.tiny import (
    make_tiny_minigpt4,
    tiny_minigpt4_tokenizer,
    train_tiny_minigpt4_tokenizer,
    with_block,
)

PAIRS = [
    ("Is there a dog in the image?", "Yes, there is a dog.", "No."),
    ("Describe the image in detail.", "A red circle next to a blue square.", "There are two cups on a table."),
]


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    directory = str(tmp_path_factory.mktemp("minigpt4_tokenizer"))
    train_tiny_minigpt4_tokenizer(directory)
    return tiny_minigpt4_tokenizer(directory)


@pytest.fixture(scope="module", params=[False, True], ids=["llama2", "vicuna0"])
def plain(request, tokenizer):
    return make_tiny_minigpt4(len(tokenizer) - 2, has_qformer=request.param)


def pairs(model, tokenizer):
    """(prompts with their image tokens expanded, chosen, rejected) as the preference data gives them."""
    image, count = model.config.image_token_id, model.config.image_seq_length
    prompts, chosen, rejected = [], [], []
    for question, good, bad in PAIRS:
        prompt, good_ids = prompt_and_answer_ids(question, good, True, tokenizer, image, conv_mode="minigpt4_llama2")
        _, bad_ids = prompt_and_answer_ids(question, bad, True, tokenizer, image, conv_mode="minigpt4_llama2")
        at = prompt.index(image)
        prompts.append(prompt[:at] + [image] * count + prompt[at + 1 :])
        chosen.append(good_ids)
        rejected.append(bad_ids)
    return prompts, chosen, rejected


def padded(rows, side, pad):
    width = max(map(len, rows))
    ids = [([pad] * (width - len(r)) + r) if side == "left" else (r + [pad] * (width - len(r))) for r in rows]
    mask = [
        ([0] * (width - len(r)) + [1] * len(r)) if side == "left" else ([1] * len(r) + [0] * (width - len(r)))
        for r in rows
    ]
    return torch.tensor(ids), torch.tensor(mask)


def make_batch(model, tokenizer, pixel_values):
    prompts, chosen, rejected = pairs(model, tokenizer)
    pad = tokenizer.pad_token_id
    batch = {"pixel_values": pixel_values}
    batch["prompt_input_ids"], batch["prompt_attention_mask"] = padded(prompts, "left", pad)
    batch["chosen_input_ids"], batch["chosen_attention_mask"] = padded(chosen, "right", pad)
    batch["rejected_input_ids"], batch["rejected_attention_mask"] = padded(rejected, "right", pad)
    return batch


def full_sequence_logps(model, tokenizer, pixel_values, answers_index):
    """The usual recipe for one model: prompt + answer sequences, logits over everything, answer tokens summed."""
    prompts, *answers = pairs(model, tokenizer)
    rows = [p + a for p, a in zip(prompts, answers[answers_index])]
    labels = [[-100] * len(p) + a for p, a in zip(prompts, answers[answers_index])]
    input_ids, attention_mask = padded(rows, "right", tokenizer.pad_token_id)
    labels, _ = padded(labels, "right", -100)
    with torch.no_grad():
        logits = model(input_ids=input_ids, attention_mask=attention_mask, pixel_values=pixel_values).logits.float()
    labels, logits = labels[:, 1:].clone(), logits[:, :-1]
    mask = labels != -100
    labels[~mask] = 0
    return (torch.gather(logits.log_softmax(-1), 2, labels.unsqueeze(2)).squeeze(2) * mask).sum(-1)


def noisy(module, scale, seed):
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.add_(scale * torch.randn(parameter.shape, generator=generator))


@pytest.mark.parametrize("variant", VARIANTS)
def test_shared_backbone_logps_equal_two_separate_models(plain, tokenizer, variant):
    model = with_block(plain, variant, perturb=0.1, seed=3)
    reference_model = copy.deepcopy(model)
    reference = ReferenceHead.snapshot(model, copy_lm_head=True)
    noisy(model.post_decoder, 0.2, seed=5)
    noisy(model.lm_head, 0.05, seed=6)  # stage 2 trains lm_head too
    pixel_values = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    logps = shared_pair_logps(model, reference, make_batch(model, tokenizer, pixel_values))
    expected = {
        "policy_chosen": full_sequence_logps(model, tokenizer, pixel_values, 0),
        "policy_rejected": full_sequence_logps(model, tokenizer, pixel_values, 1),
        "reference_chosen": full_sequence_logps(reference_model, tokenizer, pixel_values, 0),
        "reference_rejected": full_sequence_logps(reference_model, tokenizer, pixel_values, 1),
    }
    for name, values in expected.items():
        torch.testing.assert_close(getattr(logps, name), values, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(logps.policy_chosen, logps.reference_chosen, atol=1e-3)


@pytest.mark.parametrize("variant", VARIANTS)
def test_first_loss_is_ln2_and_a_step_trains_the_block_only(plain, tokenizer, variant):
    model = with_block(plain, variant)  # identity, as at the start of stage 1
    reference = ReferenceHead.snapshot(model, copy_lm_head=False)
    model.requires_grad_(False)
    model.post_decoder.requires_grad_(True)
    backbone = {name: tensor.clone() for name, tensor in model.state_dict().items() if "post_decoder" not in name}
    pixel_values = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    batch = make_batch(model, tokenizer, pixel_values)
    optimizer = torch.optim.AdamW(model.post_decoder.parameters(), lr=1e-2)
    loss, _ = preference_loss(shared_pair_logps(model, reference, batch), beta=0.1)
    assert loss.item() == pytest.approx(math.log(2), abs=1e-6)
    loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.post_decoder.parameters())
    optimizer.step()
    after, _ = preference_loss(shared_pair_logps(model, reference, batch), beta=0.1)
    assert after.item() != pytest.approx(math.log(2), abs=1e-6)  # the step changed the policy
    assert all(torch.equal(model.state_dict()[name], tensor) for name, tensor in backbone.items())
