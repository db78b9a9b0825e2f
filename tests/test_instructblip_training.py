"""Training on InstructBLIP (tiny, fp32, CPU): the collators give the Q-Former the question that follows the image, the
shared frozen backbone's log-probs equal two separate models on full sequences (each sequence run alone), the first
DPO loss is ln 2 with a step that trains the block only, SFT's label-position loss equals the model's own, and a
backbone cache's keys hold the Q-Former's tokens."""

import copy
import math

import pytest
import torch
from PIL import Image

from ha_dpo.cache.preference import PreferenceSource
from ha_dpo.data.collators import PreferenceCollator, SupervisedCollator
from ha_dpo.data.llava_data import SupervisedDataset, SupervisedSample
from ha_dpo.data.preference_data import PreferenceDataset, PreferenceSample
from ha_dpo.data.skips import SkipCounter
from ha_dpo.objective.dpo_loss import preference_loss
from ha_dpo.objective.pair_logps import ReferenceHead, backbone_pair_states, shared_pair_logps
from ha_dpo.objective.supervised_loss import supervised_loss
from post_decoder import VARIANTS
from post_decoder.families.instructblip.tiny import (
    make_qformer_tokenizer,
    make_tiny_instructblip,
    tiny_processor,
    train_language_tokenizer,
    with_block,
)
from post_decoder.families.llava.conversation import ASSISTANT, USER
from post_decoder.family import family_for
from tests.helpers import add_noise

CONV_MODE = "instructblip"
PAIRS = (
    ("Is there a dog in the image?", "Yes, there is a dog in the image.", "No, there is no dog."),
    ("Describe this image in detail.", "The image shows a red circle.", "There are two cups on a table."),
    ("Is there a cat in the image?", "No, there is no cat in the image.", "Yes, there is a cat."),
)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    directory = tmp_path_factory.mktemp("instructblip_training")
    tokenizer = train_language_tokenizer(str(directory / "llm"))
    qformer_tokenizer = make_qformer_tokenizer(str(directory / "qformer"))
    plain = make_tiny_instructblip(tokenizer, qformer_tokenizer)
    images = []
    for number in range(2):
        path = directory / f"image{number}.png"
        pixels = torch.randint(0, 256, (30 + 7 * number, 40, 3), generator=torch.Generator().manual_seed(number))
        Image.fromarray(pixels.byte().numpy()).save(path)
        images.append(str(path))
    return tokenizer, plain, tiny_processor(tokenizer, qformer_tokenizer, plain.config), images


def preference_items(tiny, images=None):
    tokenizer, plain, _, paths = tiny
    images = [paths[0], None, paths[1]] if images is None else images
    samples = [PreferenceSample(f"p{n}", image, *pair) for n, (image, pair) in enumerate(zip(images, PAIRS))]
    family, config = family_for(plain), plain.config
    dataset = PreferenceDataset(
        samples, tokenizer, family.image_token_id(config), config.num_query_tokens, 512, conv_mode=CONV_MODE
    )
    return dataset, [dataset[index] for index in range(len(dataset))]


def preference_batch(tiny, images=None):
    tokenizer, plain, processor, _ = tiny
    dataset, items = preference_items(tiny, images)
    return dataset, items, PreferenceCollator(tokenizer, processor, plain.config)(items)


def test_the_collator_gives_the_qformer_each_images_question(tiny):
    tokenizer, plain, processor, _ = tiny
    _, items, batch = preference_batch(tiny)
    expected = processor.qformer_tokenizer([PAIRS[0][0], PAIRS[2][0]], padding="longest", return_tensors="pt")
    assert torch.equal(batch["qformer_input_ids"], expected.input_ids)  # one row per image: the text-only pair none
    assert torch.equal(batch["qformer_attention_mask"], expected.attention_mask)
    assert batch["pixel_values"].shape[0] == 2
    # The language model's prompt: the image's query tokens, LAVIS's "</s>", the question, as POPE sends it.
    image_id, count = plain.config.image_token_id, plain.config.num_query_tokens
    prompt = items[0]["prompt_input_ids"].tolist()
    question = tokenizer(PAIRS[0][0], add_special_tokens=False).input_ids
    assert prompt == [image_id] * count + [tokenizer.convert_tokens_to_ids("</s>")] + question
    chosen = items[0]["chosen_input_ids"].tolist()  # the answer's own ids, then </s> (LAVIS's training target)
    assert chosen == tokenizer(PAIRS[0][1], add_special_tokens=False).input_ids + [tokenizer.eos_token_id]


def one_sequence_logp(model, prompt_item, answer, image, processor) -> torch.Tensor:
    """The usual recipe for one sequence, alone (no padding, no sharing): prompt + answer through the whole model,
    the answer tokens' log-probs summed."""
    prompt = prompt_item["prompt_input_ids"]
    ids = torch.cat([prompt, answer]).unsqueeze(0)
    inputs = {}
    if image is not None:
        inputs["pixel_values"] = processor(images=[image], return_tensors="pt")["pixel_values"]
        inputs.update(family_for(model).prompt_inputs([prompt_item["prompt_text"]], processor))
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=torch.ones_like(ids), **inputs).logits.float()[0]
    predicting = logits[len(prompt) - 1 : -1].log_softmax(-1)
    return predicting.gather(1, answer.unsqueeze(1)).sum()


@pytest.mark.parametrize("vision_source", ["vision_tower", "projector"])
@pytest.mark.parametrize("variant", VARIANTS)
def test_shared_backbone_logps_equal_two_separate_models(tiny, variant, vision_source):
    _, plain, processor, _ = tiny
    model = with_block(plain, variant, perturb=0.1, seed=3, vision_source=vision_source)
    reference_model = copy.deepcopy(model)
    reference = ReferenceHead.snapshot(model, copy_lm_head=True)
    add_noise(model.post_decoder, 0.2, seed=5)
    add_noise(model.lm_head, 0.05, seed=6)  # stage 2 trains lm_head too
    _, items, batch = preference_batch(tiny)
    logps = shared_pair_logps(model, reference, batch)
    for name, which, separate in (
        ("policy_chosen", "chosen", model),
        ("policy_rejected", "rejected", model),
        ("reference_chosen", "chosen", reference_model),
        ("reference_rejected", "rejected", reference_model),
    ):
        expected = torch.stack(
            [one_sequence_logp(separate, item, item[f"{which}_input_ids"], item["image"], processor) for item in items]
        )
        torch.testing.assert_close(getattr(logps, name), expected, atol=1e-5, rtol=1e-5, msg=name)
    assert not torch.allclose(logps.policy_chosen, logps.reference_chosen, atol=1e-3)


def test_the_qformer_question_changes_the_logps(tiny):
    """The same pairs with each image's Q-Former reading another question: other states, so the question is
    really read (and a cache must key on it)."""
    _, plain, _, _ = tiny
    model = with_block(plain, "post_interaction", perturb=0.1, seed=3)
    _, _, batch = preference_batch(tiny)
    swapped = {**batch, "qformer_input_ids": batch["qformer_input_ids"].flip(0)}
    swapped["qformer_attention_mask"] = batch["qformer_attention_mask"].flip(0)
    first, second = backbone_pair_states(model, batch), backbone_pair_states(model, swapped)
    assert (first.hidden[0] - second.hidden[0]).abs().max() > 1e-3  # the first pair's answer read otherwise
    torch.testing.assert_close(first.hidden[2:4], second.hidden[2:4])  # the text-only pair: no Q-Former


@pytest.mark.parametrize("variant", VARIANTS)
def test_first_loss_is_ln2_and_a_step_trains_the_block_only(tiny, variant):
    _, plain, _, _ = tiny
    model = with_block(plain, variant)  # identity, as at the start of stage 1
    reference = ReferenceHead.snapshot(model, copy_lm_head=False)
    model.requires_grad_(False)
    model.post_decoder.requires_grad_(True)
    backbone = {name: tensor.clone() for name, tensor in model.state_dict().items() if "post_decoder" not in name}
    _, _, batch = preference_batch(tiny)
    optimizer = torch.optim.AdamW(model.post_decoder.parameters(), lr=1e-2)
    loss, _ = preference_loss(shared_pair_logps(model, reference, batch), beta=0.1)
    assert loss.item() == pytest.approx(math.log(2), abs=1e-6)
    loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.post_decoder.parameters())
    optimizer.step()
    after, _ = preference_loss(shared_pair_logps(model, reference, batch), beta=0.1)
    assert after.item() != pytest.approx(math.log(2), abs=1e-6)
    assert all(torch.equal(model.state_dict()[name], tensor) for name, tensor in backbone.items())


def supervised_batch(tiny, samples):
    tokenizer, plain, processor, _ = tiny
    config, skips = plain.config, SkipCounter("samples")
    dataset = SupervisedDataset(
        samples, tokenizer, config.image_token_id, config.num_query_tokens, 512, skips=skips, conv_mode=CONV_MODE
    )
    items = [dataset[index] for index in range(len(dataset))]
    return dataset, items, SupervisedCollator(tokenizer, processor, config)(items), skips


def test_sft_reads_the_image_turns_question_and_its_loss_is_the_models_own(tiny):
    _, plain, processor, paths = tiny
    samples = [
        SupervisedSample("a", paths[0], ((USER, "<image>\nWhat is this?"), (ASSISTANT, "A red circle."))),
        SupervisedSample("b", paths[1], ((USER, "Describe this image.\n<image>"), (ASSISTANT, "Two cups."))),
        SupervisedSample(
            "multi", paths[1], ((USER, "<image>\nWhy?"), (ASSISTANT, "No."), (USER, "Hm?"), (ASSISTANT, "Yes."))
        ),  # fmt: skip
    ]
    _, items, batch, skips = supervised_batch(tiny, samples)
    assert [item["prompt_text"] for item in items] == ["What is this?", "Describe this image."]
    assert skips.counts == {"the template cannot hold this conversation": 1}  # InstructBLIP has one question
    expected = processor.qformer_tokenizer(["What is this?", "Describe this image."], padding="longest")
    assert batch["qformer_input_ids"].tolist() == expected.input_ids
    model = with_block(plain, "post_interaction", perturb=0.1, seed=2)
    with torch.no_grad():
        own = model(**batch).loss
        ours = supervised_loss(model, batch)
    torch.testing.assert_close(ours, own, atol=1e-5, rtol=1e-5)


def test_a_cache_keys_pairs_and_images_on_the_qformers_question(tiny):
    """Two pairs with the same image and the same language-model ids but another question for the Q-Former get
    different keys (their states differ); without the family's prompt inputs the keys would be equal."""
    tokenizer, plain, processor, paths = tiny
    dataset, _ = preference_items(tiny, [paths[0], paths[0], paths[0]])
    collator = PreferenceCollator(tokenizer, processor, plain.config)
    source = PreferenceSource(dataset, collator, {paths[0]: "d" * 64}, prompt_states=False)
    assert len(set(source.image_keys)) == 3 and len(set(source.entry_keys)) == 3
    same_question = dataset.items[0][0]
    dataset.items[1] = (same_question, *dataset.items[1][1:])  # pair 1 now asks pair 0's question of the Q-Former
    source = PreferenceSource(dataset, collator, {paths[0]: "d" * 64}, prompt_states=False)
    assert source.image_keys[0] == source.image_keys[1] != source.image_keys[2]


def test_the_frozen_backbone_runs_without_dropout_in_training_mode(tiny):
    """The Q-Former has dropout (0.1, as the hub's); in a training step the frozen backbone still gives the states a
    backbone cache stores (eval mode), the same every step, and the model's mode is kept."""
    _, plain, _, _ = tiny
    model = with_block(plain, "post_interaction", perturb=0.1, seed=3)
    assert model.config.qformer_config.hidden_dropout_prob > 0
    _, _, batch = preference_batch(tiny)
    expected = backbone_pair_states(model, batch).hidden  # eval mode
    model.train()
    torch.manual_seed(0)
    assert torch.equal(backbone_pair_states(model, batch).hidden, expected)
    assert model.training and model.qformer.training
