"""The family interface and its registry, answered by LLaVA-1.5 (post_decoder/family.py's checklist)."""

import pytest
import torch
from PIL import Image
from transformers import LlavaConfig

from post_decoder.errors import InputError
from post_decoder.families.llava import LLAVA
from post_decoder.families.llava.conversation import question_prompt, tokenize_with_image
from post_decoder.families.llava.key_layouts import LAYOUTS, LLAVA_HF, LLAVA_HF_HUB, ORIGINAL
from post_decoder.family import (
    conv_modes,
    default_conv_mode,
    family_for,
    family_for_checkpoint,
    family_for_conv_mode,
    pack_images_per_sample,
)
from post_decoder.wrapped_model import PostDecoderMixin
from tests.helpers import image_batch, with_block


def test_the_registry_finds_llava_from_a_model_a_config_a_config_json_or_a_name(plain_llava):
    model = with_block(plain_llava, "post_interaction")
    assert family_for(model) is family_for(model.config) is family_for(plain_llava.config) is LLAVA
    assert family_for({"model_type": "llava_post_decoder"}) is family_for("llava") is LLAVA
    with pytest.raises(InputError, match="no backbone family reads model_type 'bert'"):
        family_for("bert")


def test_a_checkpoint_is_claimed_by_its_config_json():
    assert family_for_checkpoint({"model_type": "llava"}, "here") is LLAVA
    original = {"architectures": ["LlavaLlamaForCausalLM"], "model_type": "llava", "mm_vision_tower": "clip"}
    assert family_for_checkpoint(original, "here") is LLAVA
    with pytest.raises(
        InputError, match=r"here is not a (.* or )?LLaVA-1.5( or .*)? checkpoint: config.json has model_type 'bert'"
    ):
        family_for_checkpoint({"model_type": "bert"}, "here")


def test_conversation_modes_name_their_family():
    modes = conv_modes()
    assert len(modes) == len(set(modes)) and {"vicuna_v1", "llava_v1", "qwen2_vl", "qwen3_vl"} <= set(modes)
    assert default_conv_mode() == "vicuna_v1"
    assert family_for_conv_mode("llava_v1") is family_for_conv_mode(None) is LLAVA
    with pytest.raises(InputError, match="unknown conversation mode 'chatml'"):
        family_for_conv_mode("chatml")


def test_block_sizes_come_from_the_family():
    config = LlavaConfig()
    assert LLAVA.block_sizes(config, "vision_tower") == {
        "hidden_size": 4096,
        "vision_hidden_size": 1024,
        "num_attention_heads": 32,
        "intermediate_size": 11008,
    }
    assert LLAVA.block_sizes(config, "projector")["vision_hidden_size"] == 4096
    config.vision_feature_layer = [-2, -5]  # LLaVA concatenates several layers' features
    assert LLAVA.block_sizes(config, "vision_tower")["vision_hidden_size"] == 2048


def test_position_ids_of_a_prompt_and_of_tokens_continuing_it():
    prompt_mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])  # left padding
    assert LLAVA.position_ids(prompt_mask).tolist() == [[0, 0, 0, 1, 2], [0, 1, 2, 3, 4]]
    continuation = torch.tensor([[0, 1, 1], [1, 1, 1]])  # left-padded continuation: its padding takes its first
    assert LLAVA.position_ids(continuation, prompt_mask).tolist() == [[3, 3, 4], [5, 6, 7]]
    # The interface's calls give LLaVA the same numbers: a prompt's, then its continuation's from its positions.
    prompt_positions = LLAVA.prompt_position_ids(None, None, prompt_mask)
    assert torch.equal(prompt_positions, LLAVA.position_ids(prompt_mask))
    continued = LLAVA.continued_position_ids(continuation, prompt_positions, prompt_mask)
    assert continued.tolist() == [[3, 3, 4], [5, 6, 7]]


def test_continued_positions_start_past_the_largest_prompt_position_on_every_axis():
    # M-RoPE: an image of 2x3 merged tokens after 2 text tokens takes positions 2..4 (its rows and columns), and
    # the text after it starts at max + 1 = 5, not at the token count (8). Row 0 is left-padded by one token.
    prompt = torch.tensor(
        [
            [[0, 0, 1, 2, 2, 2, 2, 2, 2], [0, 0, 1, 2, 2, 2, 3, 3, 3], [0, 0, 1, 2, 3, 4, 2, 3, 4]],
            [[0, 1, 2, 3, 4, 5, 6, 7, 8]] * 3,  # a text-only row of 9 tokens
        ]
    ).transpose(0, 1)  # [3 axes, 2 rows, 9 positions]
    prompt_mask = torch.tensor([[0, 1, 1, 1, 1, 1, 1, 1, 1], [1] * 9])
    continued = LLAVA.continued_position_ids(torch.tensor([[0, 1, 1], [1, 1, 1]]), prompt, prompt_mask)
    assert continued.shape == (3, 2, 3)
    assert continued[0].tolist() == continued[2].tolist() == [[5, 5, 6], [9, 10, 11]]


def test_prompt_tokens_ask_the_image_token_count_per_image(plain_llava, llava_tokenizer):
    config, family = plain_llava.config, LLAVA
    prompt = family.question_prompt("Is there a cup?")
    assert prompt == question_prompt("Is there a cup?", conv_mode="vicuna_v1")
    image = Image.new("RGB", (40, 30))
    assert family.image_token_id(config) == config.image_token_id
    assert family.image_token_count(config, image) == family.image_token_count(config) == config.image_seq_length
    ids = family.tokenize_prompt(prompt, llava_tokenizer, config, images=[image])
    assert ids == tokenize_with_image(prompt, llava_tokenizer, config.image_token_id, config.image_seq_length)
    two = "<image>\nA <image>\nB"  # a count per image, in order
    ids = family.tokenize_with_image(two, llava_tokenizer, config.image_token_id, [2, 3])
    assert ids.count(config.image_token_id) == 5
    with pytest.raises(ValueError, match="1 image-token counts for 2 <image>"):
        family.tokenize_with_image(two, llava_tokenizer, config.image_token_id, [2])
    assert family.tokenize_prompt(two, llava_tokenizer, config, image_tokens=[2, 3]) == ids


def test_llavas_image_inputs_are_its_pixel_values_with_one_count_per_image(plain_llava, tmp_path):
    import json

    from post_decoder.families.llava.image_processing import load_image_processor
    from post_decoder.families.llava.tiny import clip_preprocessor_config
    from post_decoder.images import model_image_inputs, pixel_values, preprocess_images

    (tmp_path / "preprocessor_config.json").write_text(json.dumps(clip_preprocessor_config(32)))
    processor = load_image_processor(str(tmp_path))
    images = [Image.new("RGB", (40, 30), (200, 0, 0)), Image.new("RGB", (20, 50), (0, 200, 0))]
    inputs = LLAVA.image_inputs(images, processor)
    assert list(inputs) == ["pixel_values"] and torch.equal(
        inputs["pixel_values"], preprocess_images(images, processor)
    )
    assert LLAVA.image_token_counts(plain_llava.config, inputs) == [plain_llava.config.image_seq_length] * 2
    on_model = model_image_inputs(plain_llava, processor, images)
    assert torch.equal(on_model["pixel_values"], pixel_values(plain_llava, processor, images))


def test_a_conversation_in_the_default_mode_is_vicuna_v1():
    conversation = LLAVA.conversation().add_user("Hi", with_image=True).add_assistant(None)
    assert conversation.prompt().endswith("USER: <image>\nHi ASSISTANT:")
    assert conversation.prompt() == question_prompt("Hi")


def test_images_of_different_lengths_are_packed_with_their_masks():
    images = [torch.full((2, 1), 1.0), torch.full((3, 1), 2.0), torch.full((1, 1), 3.0)]  # Qwen-VL-like counts
    packed, mask = pack_images_per_sample(images, torch.tensor([5, 0, 1]))
    assert packed[:, :, 0].tolist() == [[1, 1, 2, 2, 2], [0] * 5, [3, 0, 0, 0, 0]]
    assert mask.sum(1).tolist() == [5, 0, 1]
    with pytest.raises(ValueError, match=r"image tokens per sample \[4, 0, 2\] do not match images of \[2, 3, 1\]"):
        pack_images_per_sample(images, torch.tensor([4, 0, 2]))


def test_the_three_key_layouts_are_one_table():
    original, hub, ours = LAYOUTS[ORIGINAL], LAYOUTS[LLAVA_HF_HUB], LAYOUTS[LLAVA_HF]
    for theirs, layout in (
        ("model.mm_projector.2.weight", original),
        ("multi_modal_projector.linear_2.weight", hub),
        ("model.multi_modal_projector.linear_2.weight", ours),
    ):
        assert layout.to_ours(theirs) == "model.multi_modal_projector.linear_2.weight"
        assert layout.to_checkpoint("model.multi_modal_projector.linear_2.weight") == theirs
    assert original.to_ours("model.layers.0.mlp.up_proj.weight") == "model.language_model.layers.0.mlp.up_proj.weight"
    assert hub.to_ours("language_model.lm_head.weight") == "lm_head.weight"
    assert original.to_ours("post_decoder.layers.0.mlp.up_proj.weight") == "post_decoder.layers.0.mlp.up_proj.weight"
    keys = ["language_model.model.embed_tokens.weight"]
    assert LLAVA.key_layout({"model_type": "llava"}, keys, "here") is hub
    with pytest.raises(InputError, match="here is not a LLaVA-1.5 checkpoint: no language_model"):
        LLAVA.key_layout({"model_type": "llava"}, ["embed_tokens.weight"], "here")


def test_a_config_json_gains_the_block_as_its_family_writes_it():
    block = {"model_type": "post_decoder", "variant": "post_interaction"}
    hf = LLAVA.config_with_block({"model_type": "llava", "architectures": ["LlavaForConditionalGeneration"]}, block)
    assert hf["model_type"] == "llava_post_decoder" and hf["post_decoder_config"] == block
    assert hf["architectures"] == ["LlavaPostDecoderForConditionalGeneration"]
    original = {"model_type": "llava", "architectures": ["LlavaLlamaForCausalLM"], "mm_vision_tower": "clip"}
    assert LLAVA.config_with_block(original, block) == {**original, "post_decoder_config": block}


def test_generation_reaches_the_block_and_the_block_can_be_bypassed(plain_llava, llava_tokenizer):
    model = with_block(plain_llava, "post_interaction", perturb=0.3)
    assert isinstance(model, PostDecoderMixin)  # generate's steps run on its forward
    base = LLAVA.block_bypassed(model)
    assert base.post_decoder is None and base.config.post_decoder_config is None
    assert model.post_decoder is not None and model.config.post_decoder_config is not None  # untouched
    assert base.model is model.model and base.lm_head is model.lm_head
    batch = image_batch(model, llava_tokenizer, ["Is there a cup?"])
    with torch.no_grad():
        torch.testing.assert_close(base(**batch).logits, plain_llava(**batch).logits)
        assert not torch.allclose(model(**batch).logits, plain_llava(**batch).logits)


def test_lora_targets_are_the_llms_linear_layers_and_the_projector_trains_beside_them(plain_llava):
    import re

    names = [name for name, _ in plain_llava.named_modules()]
    targeted = [name for name in names if re.fullmatch(LLAVA.lora_targets, name)]
    assert targeted and all(name.startswith("model.language_model.layers.") for name in targeted)
    assert all(plain_llava.get_submodule(name) is not None for name in LLAVA.modules_trained_with_lora)


def test_checkpoint_flag_values_are_llavas_settings_and_other_families_have_none(plain_llava, tmp_path):
    from ha_dpo.cli.arguments import ModelArguments
    from ha_dpo.trainer.training_model import _check_matches_checkpoint
    from post_decoder.families.minigpt4.tiny import make_tiny_minigpt4

    config = plain_llava.config
    vision = config.vision_config
    assert LLAVA.checkpoint_flag_values(config) == {
        "mm_vision_select_layer": config.vision_feature_layer,
        "vision_tower_shape": (vision.patch_size, vision.image_size),
    }
    minigpt4 = make_tiny_minigpt4(300)
    assert family_for(minigpt4).checkpoint_flag_values(minigpt4.config) == {}
    for flags, message in (
        ({"mm_vision_select_layer": -2}, r"MiniGPT-4 model, which has no such setting \(a LLaVA-1.5 flag\): drop"),
        ({"vision_tower": "openai/clip-vit-large-patch14-336"}, "whose vision encoder is its own"),
    ):
        with pytest.raises(InputError, match=message):
            _check_matches_checkpoint(ModelArguments("tiny", tune_post_decoder=True, **flags), minigpt4)
    layer = ModelArguments("tiny", tune_post_decoder=True, mm_vision_select_layer=config.vision_feature_layer)
    _check_matches_checkpoint(layer, plain_llava)  # LLaVA's own value passes
    with pytest.raises(InputError, match=f"uses layer {config.vision_feature_layer}"):
        _check_matches_checkpoint(
            ModelArguments("tiny", tune_post_decoder=True, mm_vision_select_layer=-7), plain_llava
        )


@pytest.mark.parametrize("vision_source", ["vision_tower", "projector"])
def test_vision_rows_per_image_are_the_rows_the_block_reads(vision_source, plain_llava, llava_tokenizer, tmp_path):
    """What a backbone cache's disk estimate counts per image: the rows `backbone_forward` packs for the block."""
    from post_decoder import PostDecoderConfig
    from post_decoder.families.instructblip.tiny import (
        make_qformer_tokenizer,
        make_tiny_instructblip,
        question_batch,
        tiny_processor,
        train_language_tokenizer,
    )
    from post_decoder.families.instructblip.tiny import with_block as instructblip_with_block
    from post_decoder.families.minigpt4.tiny import (
        make_tiny_minigpt4,
        minigpt4_batch,
        tiny_minigpt4_tokenizer,
        train_tiny_minigpt4_tokenizer,
    )
    from post_decoder.families.minigpt4.tiny import with_block as minigpt4_with_block
    from tests.helpers.qwen_vl import TinyQwen, batch, ours, picture

    cases = []
    tokenizer = train_language_tokenizer(str(tmp_path / "llm"))
    qformer = make_qformer_tokenizer(str(tmp_path / "qformer"))
    plain = make_tiny_instructblip(tokenizer, qformer)
    model = instructblip_with_block(plain, "post_interaction", vision_source=vision_source)
    inputs = question_batch(model, tiny_processor(tokenizer, qformer, plain.config), [picture(40, 30)], ["Is it?"])
    cases.append((model, inputs))
    train_tiny_minigpt4_tokenizer(str(tmp_path / "minigpt4"))
    minigpt4_tokenizer = tiny_minigpt4_tokenizer(str(tmp_path / "minigpt4"))
    for has_qformer in (False, True):
        plain = make_tiny_minigpt4(len(minigpt4_tokenizer) - 2, has_qformer=has_qformer)
        model = minigpt4_with_block(plain, "post_interaction", vision_source=vision_source)
        cases.append((model, minigpt4_batch(model, minigpt4_tokenizer, ["Is it?"])))
    qwen = TinyQwen("qwen2_5_vl", tmp_path)
    model = ours(qwen.plain, PostDecoderConfig(variant="post_interaction", vision_source=vision_source))
    cases.append((model, batch(model, qwen.tokenizer, qwen.processor, [("Is it?", [picture(40, 24)])])))
    llava = with_block(plain_llava, "post_interaction", vision_source=vision_source)
    cases.append((llava, image_batch(llava, llava_tokenizer, ["Is it?"])))
    for model, inputs in cases:
        family, config = family_for(model), model.config
        tokens = int((inputs["input_ids"][0] == family.image_token_id(config)).sum())
        with torch.no_grad():
            output = model.backbone_forward(**inputs)
        rows = int(output.vision_mask[0].sum())
        assert family.vision_rows_per_image(config, tokens, vision_source) == rows, family.name
