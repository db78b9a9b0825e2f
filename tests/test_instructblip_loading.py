"""InstructBLIP's folders: the hub's layout, ours with a block (merged, or the block alone beside a base), and
transformers' Auto class opening them once `post_decoder` is imported."""

import json
import os
import shutil

import pytest
import torch
from PIL import Image
from transformers import AutoModelForImageTextToText, InstructBlipForConditionalGeneration, InstructBlipProcessor

from post_decoder.block.files import save_post_decoder
from post_decoder.builder import load_pretrained_model
from post_decoder.errors import InputError
from post_decoder.families.instructblip import (
    INSTRUCTBLIP,
    InstructBlipPostDecoderConfig,
    InstructBlipPostDecoderForConditionalGeneration,
)
from post_decoder.families.instructblip.tiny import make_tiny_hub_folder, question_batch
from post_decoder.family import family_for_checkpoint
from post_decoder.saving import save_model_folder

QUESTIONS = ["Is there a dog in the image?", "Describe this image in detail."]


@pytest.fixture(scope="module")
def hub_folder(tmp_path_factory):
    return make_tiny_hub_folder(str(tmp_path_factory.mktemp("instructblip") / "hub"))


def batch_for(model, processor):
    images = [Image.new("RGB", (40, 30), (200, 20, 20)), Image.new("RGB", (30, 40), (20, 20, 200))]
    return question_batch(model, processor, images, QUESTIONS)


def logits(model, batch) -> torch.Tensor:
    with torch.no_grad():
        return model(**batch).logits


def test_a_hub_folder_loads_as_the_plain_model_with_its_processor(hub_folder):
    assert sorted(os.listdir(hub_folder)) == [
        "config.json",
        "generation_config.json",
        "model.safetensors",
        "preprocessor_config.json",
        "processor_config.json",
        "qformer_tokenizer",
        "tokenizer.json",
        "tokenizer_config.json",
    ]
    with open(os.path.join(hub_folder, "config.json")) as handle:
        raw = json.load(handle)
    assert raw["model_type"] == "instructblip" and family_for_checkpoint(raw, hub_folder) is INSTRUCTBLIP
    tokenizer, model, processor, _ = load_pretrained_model(hub_folder, device="cpu", dtype=torch.float32)
    assert isinstance(model, InstructBlipPostDecoderForConditionalGeneration) and model.post_decoder is None
    assert isinstance(processor, InstructBlipProcessor) and processor.tokenizer is tokenizer
    assert processor.num_query_tokens == model.config.num_query_tokens
    plain = InstructBlipForConditionalGeneration.from_pretrained(hub_folder).eval()
    batch = batch_for(model, processor)
    torch.testing.assert_close(logits(model, batch), logits(plain, batch), atol=0, rtol=0)
    # The processor's pixel values and Q-Former tokens are transformers' own processor's.
    theirs = InstructBlipProcessor.from_pretrained(hub_folder)(
        images=[Image.new("RGB", (40, 30), (200, 20, 20))], text=[QUESTIONS[0]], return_tensors="pt"
    )
    assert torch.equal(batch["pixel_values"][:1], theirs["pixel_values"])
    assert batch["qformer_input_ids"][0].tolist() == theirs["qformer_input_ids"][0].tolist()


def test_a_new_block_saved_merged_opens_with_load_pretrained_model_and_the_auto_class(hub_folder, tmp_path):
    tokenizer, model, processor, _ = load_pretrained_model(
        hub_folder, device="cpu", dtype=torch.float32, post_decoder="post_interaction"
    )
    with torch.no_grad():
        for parameter in model.post_decoder.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    batch = batch_for(model, processor)
    expected = logits(model, batch)
    merged = str(tmp_path / "merged")
    save_model_folder(model, tokenizer, processor, merged)
    with open(os.path.join(merged, "config.json")) as handle:
        raw = json.load(handle)
    assert raw["model_type"] == InstructBlipPostDecoderConfig.model_type
    assert raw["post_decoder_config"]["variant"] == "post_interaction"

    _, reloaded, reloaded_processor, _ = load_pretrained_model(merged, device="cpu", dtype=torch.float32)
    assert reloaded.post_decoder is not None
    torch.testing.assert_close(logits(reloaded, batch_for(reloaded, reloaded_processor)), expected, atol=0, rtol=0)

    auto = AutoModelForImageTextToText.from_pretrained(merged).eval()
    assert isinstance(auto, InstructBlipPostDecoderForConditionalGeneration) and auto.post_decoder is not None
    torch.testing.assert_close(logits(auto, batch), expected, atol=0, rtol=0)
    with torch.no_grad():  # and the auto-loaded model's generate runs the block, as the one it was saved from
        ours = model.generate(**batch, max_new_tokens=5, min_new_tokens=5)
        assert auto.generate(**batch, max_new_tokens=5, min_new_tokens=5).tolist() == ours.tolist()


def test_a_block_saved_alone_opens_beside_its_base(hub_folder, tmp_path):
    _, model, processor, _ = load_pretrained_model(
        hub_folder, device="cpu", dtype=torch.float32, post_decoder="align_linear"
    )
    with torch.no_grad():
        for parameter in model.post_decoder.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    batch = batch_for(model, processor)
    alone = str(tmp_path / "block")
    save_post_decoder(model.post_decoder, alone)
    _, reloaded, _, _ = load_pretrained_model(alone, model_base=hub_folder, device="cpu", dtype=torch.float32)
    assert reloaded.post_decoder.config.variant == "align_linear"
    torch.testing.assert_close(logits(reloaded, batch), logits(model, batch), atol=0, rtol=0)


def test_a_folder_without_the_qformer_tokenizer_is_refused_by_name(hub_folder, tmp_path):
    broken = str(tmp_path / "broken")
    shutil.copytree(hub_folder, broken, ignore=shutil.ignore_patterns("qformer_tokenizer"))
    with pytest.raises(InputError, match=r"broken has no qformer_tokenizer/ \(the Q-Former's tokenizer\)"):
        load_pretrained_model(broken, device="cpu", dtype=torch.float32)


def test_weights_that_do_not_fit_the_config_are_listed(hub_folder, tmp_path):
    odd = str(tmp_path / "odd")
    shutil.copytree(hub_folder, odd)
    with open(os.path.join(odd, "config.json")) as handle:
        raw = json.load(handle)
    raw["text_config"]["num_hidden_layers"] += 1
    with open(os.path.join(odd, "config.json"), "w") as handle:
        json.dump(raw, handle)
    with pytest.raises(InputError, match=r"(?s)do not fit its config.json.*missing \(\d+\):.*layers\.2\."):
        load_pretrained_model(odd, device="cpu", dtype=torch.float32)


def test_image_size_options_are_refused_by_name(hub_folder):
    with pytest.raises(InputError, match="--min_pixels: InstructBLIP resizes every image to one size"):
        load_pretrained_model(hub_folder, device="cpu", dtype=torch.float32, min_pixels=1024)
