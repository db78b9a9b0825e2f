"""Training on the Qwen-VL family (tiny Qwen2-VL, Qwen2.5-VL, Qwen3-VL, fp32, CPU): the data in the model's own chat
template (the ids POPE sends, the labels Qwen's fine-tuning code sets), images of different sizes in one batch, the
shared frozen backbone's log-probs against two separate models on full sequences, the first loss."""

import copy
import math

import pytest
import torch

from ha_dpo.data.collators import PreferenceCollator, SupervisedCollator
from ha_dpo.data.image_tokens import ImageTokens
from ha_dpo.data.llava_data import SupervisedDataset, SupervisedSample, conversation_ids_and_answer_spans
from ha_dpo.data.preference_data import PreferenceDataset, PreferenceSample
from ha_dpo.data.token_ids import IGNORE_INDEX
from ha_dpo.objective.dpo_loss import preference_loss
from ha_dpo.objective.full_sequence_logps import full_sequence_logps
from ha_dpo.objective.pair_logps import ReferenceHead, shared_pair_logps
from ha_dpo.objective.supervised_loss import supervised_loss
from post_decoder import PostDecoderConfig
from post_decoder.families.llava.conversation import ASSISTANT, USER
from post_decoder.family import family_for
from tests.helpers import add_noise, named
from tests.helpers.qwen_vl import VERSIONS, TinyQwen, ours, picture

# Two sizes (4x4 and 3x5 merged patches of 8x8 pixels) and a text-only pair: one batch of three.
SIZES = ((32, 32), (40, 24))
PAIRS = (
    ("Is there a dog in the image?", "Yes, there is a dog in the image.", "No, there is no dog."),
    ("Describe the image in detail.", "The image shows a red circle.", "There are two cups on a table."),
    ("Is there a cat?", "No, there is no cat.", "Yes, there is a cat."),
)


@pytest.fixture(scope="module", params=VERSIONS)
def tiny(request, tmp_path_factory):
    world = TinyQwen(request.param, tmp_path_factory.mktemp("qwen_training"))
    world.images = []
    for number, size in enumerate(SIZES):
        path = tmp_path_factory.getbasetemp() / f"{request.param}-{number}.png"
        picture(*size, seed=number).save(path)
        world.images.append(str(path))
    world.conv_mode = family_for(world.plain).default_conv_mode
    return world


def counts_of(tiny):
    family = family_for(tiny.plain)
    return ImageTokens.for_model(family, tiny.plain.config, tiny.processor)


def preference_batch(tiny, pairs=PAIRS, images=None):
    images = tiny.images + [None] if images is None else images
    samples = [PreferenceSample(f"p{n}", image, *pair) for n, (image, pair) in enumerate(zip(images, pairs))]
    family, config = family_for(tiny.plain), tiny.plain.config
    dataset = PreferenceDataset(
        samples, tiny.tokenizer, family.image_token_id(config), counts_of(tiny), 512, conv_mode=tiny.conv_mode
    )
    collator = PreferenceCollator(tiny.tokenizer, tiny.processor, config)
    return dataset, collator([dataset[index] for index in range(len(dataset))])


def test_each_image_takes_its_own_count_and_the_collator_gives_the_grids(tiny):
    dataset, batch = preference_batch(tiny)
    config = tiny.plain.config
    image_id = config.image_token_id
    runs = [int((dataset[index]["prompt_input_ids"] == image_id).sum()) for index in range(3)]
    assert runs == [16, 15, 0]  # 32x32 -> 4x4 tokens, 40x24 -> 5x3, text only
    assert batch["image_grid_thw"].tolist() == [[1, 8, 8], [1, 6, 10]]  # patches of 4 pixels, before 2x2 merges
    assert family_for(config).image_token_counts(config, batch) == [16, 15]
    assert batch["pixel_values"].shape[0] == 64 + 60


def test_a_training_prompt_is_the_prompt_pope_sends(tiny):
    from eval.answering import PrefixCachedAnswerer

    model = ours(tiny.plain)
    answerer = PrefixCachedAnswerer(model, tiny.tokenizer, tiny.processor)
    dataset, _ = preference_batch(tiny)
    for index in range(len(tiny.images)):
        pope = answerer.prompt_ids(PAIRS[index][0], image=picture(*SIZES[index], seed=index))
        assert dataset[index]["prompt_input_ids"].tolist() == pope
    text = tiny.tokenizer.decode(dataset[0]["prompt_input_ids"])
    assert text.startswith("<|im_start|>system\n" if tiny.version != "qwen3_vl" else "<|im_start|>user\n")
    assert "<|im_start|>user\n<|vision_start|><|image_pad|>" in text and text.endswith("<|im_start|>assistant\n")
    # The answers close their turn as the chat template does: <|im_end|> and its line break.
    assert tiny.tokenizer.decode(dataset[0]["chosen_input_ids"]) == PAIRS[0][1] + "<|im_end|>\n"


def qwen_finetuning_labels(ids: list[int], header: list[int], im_end_id: int) -> list[int]:
    """Qwen's own fine-tuning code's labels, restated from QwenLM/Qwen3-VL qwen-vl-finetune/qwenvl/data/
    data_processor.py, `preprocess_qwen_visual`: after each assistant turn's header (`<|im_start|>assistant\n`:
    there the "assistant" token 77091 and the line break), every id through `<|im_end|>` and the one token after
    it (the line break) is labelled; everything else is -100. (The tiny tokenizer spells "assistant" in several
    tokens: the header is matched whole.)"""
    labels, position = [IGNORE_INDEX] * len(ids), 0
    while position < len(ids):
        if ids[position : position + len(header)] == header:
            start = end = position + len(header)
            while end < len(ids) and ids[end] != im_end_id:
                end += 1
            if end < len(ids):
                labels[start : end + 2] = ids[start : end + 2]
                position = end
        position += 1
    return labels


def test_sft_ids_are_the_chat_template_and_labels_are_qwens_own(tiny):
    turns = ((USER, "<image>\nWhat is this?"), (ASSISTANT, "A red circle."),
             (USER, "What colour is it?"), (ASSISTANT, "Red, on grass."))  # fmt: skip
    tokenizer, config = tiny.tokenizer, tiny.plain.config
    messages = [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is this?"}]},
        {"role": "assistant", "content": "A red circle."},
        {"role": "user", "content": "What colour is it?"},
        {"role": "assistant", "content": "Red, on grass."},
    ]
    chat_template_ids = tokenizer.apply_chat_template(messages, tokenize=True, return_dict=False)
    if isinstance(chat_template_ids, dict):
        chat_template_ids = chat_template_ids["input_ids"]
    ids, spans = conversation_ids_and_answer_spans(turns, tokenizer, config.image_token_id, tiny.conv_mode)
    assert ids == list(chat_template_ids)

    sample = SupervisedSample("s", tiny.images[1], turns)
    dataset = SupervisedDataset(
        [sample], tokenizer, config.image_token_id, counts_of(tiny), 512, conv_mode=tiny.conv_mode
    )
    item = dataset[0]
    expected = qwen_finetuning_labels(
        item["input_ids"].tolist(),
        tokenizer("<|im_start|>assistant\n", add_special_tokens=False).input_ids,
        tokenizer.convert_tokens_to_ids("<|im_end|>"),
    )
    assert item["labels"].tolist() == expected
    labelled = [
        tokenizer.decode([t for t in item["labels"][start:end].tolist()]) for start, end in _runs(item["labels"])
    ]
    assert labelled == ["A red circle.<|im_end|>\n", "Red, on grass.<|im_end|>\n"]
    assert int((item["input_ids"] == config.image_token_id).sum()) == 15


def _runs(labels):
    labelled = (labels != IGNORE_INDEX).tolist() + [False]
    runs, start = [], None
    for position, on in enumerate(labelled):
        if on and start is None:
            start = position
        elif not on and start is not None:
            runs.append((start, position))
            start = None
    return runs


def full_sequence(model, batch, answers_key):
    """One model the usual way: prompt + answer as one right-padded sequence through the model's own forward
    (its own M-RoPE positions), HA-DPO's log-prob sum over the answer's tokens."""
    rows, labels = [], []
    for prompt, prompt_mask, answer, answer_mask in zip(
        batch["prompt_input_ids"], batch["prompt_attention_mask"],
        batch[f"{answers_key}_input_ids"], batch[f"{answers_key}_attention_mask"],
    ):  # fmt: skip
        prompt, answer = prompt[prompt_mask.bool()], answer[answer_mask.bool()]
        rows.append(torch.cat([prompt, answer]))
        labels.append(torch.cat([torch.full_like(prompt, -100), answer]))
    width = max(map(len, rows))
    input_ids = torch.stack([torch.nn.functional.pad(row, (0, width - len(row))) for row in rows])
    attention_mask = torch.stack([torch.arange(width) < len(row) for row in rows]).long()
    label_ids = torch.stack([torch.nn.functional.pad(row, (0, width - len(row)), value=-100) for row in labels])
    with torch.no_grad():
        logits = model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            pixel_values=batch["pixel_values"],
            image_grid_thw=batch["image_grid_thw"],
        ).logits.float()
    label_ids, logits = label_ids[:, 1:].clone(), logits[:, :-1]
    mask = label_ids != -100
    label_ids[~mask] = 0
    return (torch.gather(logits.log_softmax(-1), 2, label_ids.unsqueeze(2)).squeeze(2) * mask).sum(-1)


@pytest.mark.parametrize("vision_source", ["vision_tower", "projector"])
def test_shared_backbone_logps_equal_two_separate_models_on_full_sequences(tiny, vision_source):
    block = PostDecoderConfig(variant="post_interaction", vision_source=vision_source)
    model = ours(tiny.plain, block, perturb=0.1, seed=3)
    reference_model = copy.deepcopy(model)
    reference = ReferenceHead.snapshot(model, copy_lm_head=True)
    add_noise(model.post_decoder, 0.2, seed=5)
    add_noise(model.lm_head, 0.05, seed=6)  # stage 2 trains lm_head too
    _, batch = preference_batch(tiny)

    logps = shared_pair_logps(model, reference, batch)
    expected = {
        "policy_chosen": full_sequence(model, batch, "chosen"),
        "policy_rejected": full_sequence(model, batch, "rejected"),
        "reference_chosen": full_sequence(reference_model, batch, "chosen"),
        "reference_rejected": full_sequence(reference_model, batch, "rejected"),
    }
    for name, values in expected.items():
        torch.testing.assert_close(getattr(logps, name), values, atol=1e-5, rtol=1e-5, msg=named(name))
    assert not torch.allclose(logps.policy_chosen, logps.reference_chosen, atol=1e-3)  # the heads really differ
    # The LoRA baseline's path (every sequence whole, the images repeated for both answers) agrees too.
    lora_path, _ = full_sequence_logps(model, batch, tiny.tokenizer.pad_token_id)
    torch.testing.assert_close(lora_path[0::2], expected["policy_chosen"], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(lora_path[1::2], expected["policy_rejected"], atol=1e-5, rtol=1e-5)


def test_without_a_block_the_shared_logps_are_the_plain_transformers_models(tiny):
    """The plain model computes its own M-RoPE positions (from the processor's token types): the shared path's
    prompt-then-continued positions give the same log-probs."""
    model = ours(tiny.plain)
    _, batch = preference_batch(tiny)
    logps = shared_pair_logps(model, ReferenceHead.snapshot(model, copy_lm_head=False), batch)

    class Plain(torch.nn.Module):
        def forward(self, **inputs):
            image_tokens = (inputs["input_ids"] == tiny.plain.config.image_token_id).int()
            return tiny.plain(**inputs, mm_token_type_ids=image_tokens)

    torch.testing.assert_close(logps.policy_chosen, full_sequence(Plain(), batch, "chosen"), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(logps.policy_rejected, full_sequence(Plain(), batch, "rejected"), atol=1e-5, rtol=1e-5)


def test_the_first_step_starts_at_ln2_and_reaches_the_block_only(tiny):
    model = ours(tiny.plain, "post_interaction")  # a fresh block: identity, as at the start of stage 1
    reference = ReferenceHead.snapshot(model, copy_lm_head=False)
    model.requires_grad_(False)
    model.post_decoder.requires_grad_(True)
    _, batch = preference_batch(tiny)
    loss, metrics = preference_loss(shared_pair_logps(model, reference, batch), beta=0.1)
    assert loss.item() == pytest.approx(math.log(2), abs=1e-6)
    assert metrics["rewards/margins"].item() == pytest.approx(0, abs=1e-6)
    loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.post_decoder.parameters())
    assert all(p.grad is None for p in model.model.parameters())


def test_supervised_loss_on_label_positions_is_the_models_own_loss(tiny):
    model = ours(tiny.plain, "post_interaction", perturb=0.1, seed=2)
    config = model.config
    turns_with_image = ((USER, "<image>\nWhat is this?"), (ASSISTANT, "A red circle."))
    samples = [
        SupervisedSample("a", tiny.images[0], turns_with_image),
        SupervisedSample("b", tiny.images[1], turns_with_image),
        SupervisedSample("t", None, ((USER, "Hello?"), (ASSISTANT, "Hi."))),
    ]
    dataset = SupervisedDataset(
        samples, tiny.tokenizer, config.image_token_id, counts_of(tiny), 512, conv_mode=tiny.conv_mode
    )
    batch = SupervisedCollator(tiny.tokenizer, tiny.processor, config)([dataset[i] for i in range(3)])
    with torch.no_grad():
        own = model(**batch).loss
        ours_loss = supervised_loss(model, batch)
    torch.testing.assert_close(ours_loss, own, atol=1e-6, rtol=1e-6)


def test_a_count_the_processor_disagrees_with_stops_the_batch(tiny):
    dataset, _ = preference_batch(tiny)
    item = dict(dataset[0])
    ids = item["prompt_input_ids"]
    first_image = int((ids == tiny.plain.config.image_token_id).nonzero()[0])
    item["prompt_input_ids"] = torch.cat([ids[:first_image], ids[first_image + 1 :]])  # one image token fewer
    with pytest.raises(ValueError, match="p0: its ids hold 15 image tokens, the image processor gives its image 16"):
        PreferenceCollator(tiny.tokenizer, tiny.processor, tiny.plain.config)([item])
