import json

import pytest
import torch

from ha_dpo.data.collators import PreferenceCollator, SupervisedCollator
from ha_dpo.data.hadpo_data import read_hadpo_pairs
from ha_dpo.data.llava_data import SupervisedDataset, read_llava_samples
from ha_dpo.data.preference_data import PreferenceDataset
from ha_dpo.data.skips import SkipCounter
from ha_dpo.objective.pair_logps import ReferenceHead, shared_pair_logps
from post_decoder.families.llava.image_processing import load_image_processor
from post_decoder.families.llava.tiny import clip_preprocessor_config
from post_decoder.images import preprocess_images
from tests.helpers import add_noise, named, with_block
from tests.helpers.data_files import write_hadpo, write_llava

BATCH_KEYS = {
    "prompt_input_ids",
    "prompt_attention_mask",
    "chosen_input_ids",
    "chosen_attention_mask",
    "rejected_input_ids",
    "rejected_attention_mask",
    "pixel_values",
}


@pytest.fixture(scope="module")
def image_processor(plain_llava, tmp_path_factory):
    folder = tmp_path_factory.mktemp("processor")
    (folder / "preprocessor_config.json").write_text(
        json.dumps(clip_preprocessor_config(plain_llava.config.vision_config.image_size))
    )
    return load_image_processor(str(folder))


@pytest.fixture(scope="module")
def pairs(plain_llava, llava_tokenizer, tmp_path_factory):
    samples = read_hadpo_pairs(*write_hadpo(tmp_path_factory.mktemp("hadpo")), desc_repeat=1)
    config = plain_llava.config
    return PreferenceDataset(
        samples, llava_tokenizer, config.image_token_id, config.image_seq_length, 512, SkipCounter("pairs")
    )


@pytest.fixture(scope="module")
def conversations(plain_llava, llava_tokenizer, tmp_path_factory):
    samples = read_llava_samples(*write_llava(tmp_path_factory.mktemp("llava")))
    config = plain_llava.config
    return SupervisedDataset(
        samples, llava_tokenizer, config.image_token_id, config.image_seq_length, 512, SkipCounter("LLaVA")
    )


def test_preference_batch_padding_sides_and_shapes(pairs, llava_tokenizer, image_processor):
    items = [pairs[i] for i in range(4)]
    batch = PreferenceCollator(llava_tokenizer, image_processor)(items)
    assert set(batch) == BATCH_KEYS
    pad = llava_tokenizer.pad_token_id
    for name, side in (("prompt", "left"), ("chosen", "right"), ("rejected", "right")):
        ids, mask = batch[f"{name}_input_ids"], batch[f"{name}_attention_mask"]
        lengths = [len(item[f"{name}_input_ids"]) for item in items]
        assert ids.shape == mask.shape == (4, max(lengths)) and ids.dtype == mask.dtype == torch.long
        assert len(set(lengths)) > 1  # the batch really needs padding
        for row, item in enumerate(items):
            real = item[f"{name}_input_ids"]
            kept = ids[row, -len(real) :] if side == "left" else ids[row, : len(real)]
            assert kept.tolist() == real.tolist()
            assert mask[row].sum() == len(real) and bool((ids[row][mask[row] == 0] == pad).all())
            assert (mask[row, -1] if side == "left" else mask[row, 0]) == 1
    size = image_processor.crop_size["height"]
    assert batch["pixel_values"].shape == (4, 3, size, size)
    torch.testing.assert_close(
        batch["pixel_values"], preprocess_images([item["image"] for item in items], image_processor)
    )


def test_preference_batch_gives_the_same_log_probs_as_one_pair_at_a_time(
    pairs, plain_llava, llava_tokenizer, image_processor
):
    model = with_block(plain_llava, "post_interaction")
    reference = ReferenceHead.snapshot(model, copy_lm_head=False)
    add_noise(model.post_decoder, 0.1, seed=1)  # policy moves away from the reference
    collate = PreferenceCollator(llava_tokenizer, image_processor)
    items = [pairs[i] for i in (0, 3, 4)]  # a pope pair and two descriptions: different lengths
    together = shared_pair_logps(model, reference, collate(items))
    for logps in (
        together.policy_chosen,
        together.policy_rejected,
        together.reference_chosen,
        together.reference_rejected,
    ):
        assert logps.shape == (3,) and bool(torch.isfinite(logps).all()) and bool((logps < 0).all())
    assert not torch.allclose(together.policy_chosen, together.reference_chosen)
    for row, item in enumerate(items):
        alone = shared_pair_logps(model, reference, collate([item]))
        for name in ("policy_chosen", "policy_rejected", "reference_chosen", "reference_rejected"):
            torch.testing.assert_close(
                getattr(alone, name)[0], getattr(together, name)[row], atol=1e-4, rtol=1e-4, msg=named(name)
            )


def test_supervised_batch_padding_and_images_of_the_samples_that_have_one(
    conversations, llava_tokenizer, image_processor
):
    items = [conversations[i] for i in range(len(conversations))]
    assert [item["image"] is None for item in items] == [False, True, False, False, False]
    batch = SupervisedCollator(llava_tokenizer, image_processor)(items)
    assert set(batch) == {"input_ids", "attention_mask", "labels", "pixel_values"}
    width = max(len(item["input_ids"]) for item in items)
    assert batch["input_ids"].shape == batch["labels"].shape == batch["attention_mask"].shape == (5, width)
    for row, item in enumerate(items):
        length = len(item["input_ids"])
        assert batch["input_ids"][row, :length].tolist() == item["input_ids"].tolist()
        assert batch["labels"][row, :length].tolist() == item["labels"].tolist()
        assert bool((batch["labels"][row, length:] == -100).all()) and bool(
            (batch["input_ids"][row, length:] == llava_tokenizer.pad_token_id).all()
        )
        assert batch["attention_mask"][row].tolist() == [1] * length + [0] * (width - length)
    assert batch["pixel_values"].shape[0] == 4
    text_only = SupervisedCollator(llava_tokenizer, image_processor)([items[1]])
    assert "pixel_values" not in text_only


def test_supervised_batch_runs_through_the_model_with_a_finite_loss(
    conversations, plain_llava, llava_tokenizer, image_processor
):
    model = with_block(plain_llava, "post_interaction", perturb=0.1)
    batch = SupervisedCollator(llava_tokenizer, image_processor)([conversations[i] for i in range(len(conversations))])
    output = model(**batch)
    assert torch.isfinite(output.loss) and output.loss > 0
    # the loss is the mean cross-entropy over supervised tokens only
    logits, labels = output.logits[:, :-1].float(), batch["labels"][:, 1:]
    expected = torch.nn.functional.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=-100
    )
    torch.testing.assert_close(output.loss, expected, atol=1e-5, rtol=1e-5)


def test_a_tokenizer_without_pad_token_is_refused(llava_tokenizer, image_processor):
    class NoPad:
        pad_token_id = None

    with pytest.raises(ValueError, match="no pad token"):
        PreferenceCollator(NoPad(), image_processor)
