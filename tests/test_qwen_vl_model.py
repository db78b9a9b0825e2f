"""The Qwen-VL family's model: tiny Qwen2-VL, Qwen2.5-VL and Qwen3-VL built from configs, fp32 on the CPU."""

import pytest
import torch
from transformers import AutoModelForImageTextToText

from post_decoder import PostDecoderConfig
from post_decoder.block import VARIANTS
from post_decoder.block.files import save_post_decoder
from post_decoder.builder import load_pretrained_model
from post_decoder.errors import InputError
from post_decoder.families.qwen_vl import QWEN2_5_VL, QWEN2_VL, QWEN3_VL
from post_decoder.families.qwen_vl.conversation import question_prompt
from post_decoder.family import family_for, family_for_checkpoint
from tests.helpers import eos_banned
from tests.helpers.qwen_vl import VERSIONS, TinyQwen, batch, ours, picture


@pytest.fixture(scope="module", params=VERSIONS)
def tiny(request, tmp_path_factory):
    return TinyQwen(request.param, tmp_path_factory.mktemp("qwen"))


def mixed_samples():
    """Two images of different sizes (different token counts), a text-only sample, one with two images."""
    return [
        ("Is there a dog in the image?", [picture(40, 24, seed=1)]),
        ("What color is a banana?", []),
        ("Describe the image.", [picture(24, 48, seed=2)]),
        ("Are the two images alike?", [picture(32, 32, seed=3), picture(16, 40, seed=4)]),
    ]


def test_the_chat_template_is_qwens_and_tokenizes_as_the_whole_text(tiny):
    family = family_for(tiny.plain)
    expected = (
        "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>Is there a dog?<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    if family is not QWEN3_VL:  # Qwen2-VL and Qwen2.5-VL add their default system message
        expected = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n" + expected
    assert family.question_prompt("Is there a dog?") == expected
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Is there a dog?"}]}]
    assert tiny.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) == expected
    ids = family.tokenize_prompt(expected, tiny.tokenizer, tiny.plain.config, image_tokens=[5])
    expanded = expected.replace("<|image_pad|>", "<|image_pad|>" * 5)
    assert ids == tiny.tokenizer(expanded).input_ids  # what Qwen's processor gives
    assert ids.count(tiny.plain.config.image_token_id) == 5
    assert tiny.tokenizer.decode(tiny.tokenizer.eos_token_id) == "<|im_end|>"


def test_families_are_found_from_the_config_never_the_folder_name(tiny):
    import json
    import os

    with open(os.path.join(tiny.folder, "config.json")) as handle:
        raw = json.load(handle)
    expected = {"qwen2_vl": QWEN2_VL, "qwen2_5_vl": QWEN2_5_VL, "qwen3_vl": QWEN3_VL}[tiny.version]
    assert family_for_checkpoint(raw, tiny.folder) is expected is family_for(tiny.plain)
    assert question_prompt("?", conv_mode="qwen3_vl").startswith("<|im_start|>user")


def test_image_counts_come_from_the_grid_and_the_resize_rule(tiny):
    family, config = family_for(tiny.plain), tiny.plain.config
    images = [picture(40, 24), picture(24, 48), picture(200, 200)]
    inputs = family.image_inputs(images, tiny.processor)
    grid = inputs["image_grid_thw"].tolist()
    # 8 pixels a token (4-pixel patches, 2x2 merges); the 200x200 image is shrunk under max_pixels (48*48).
    assert grid == [[1, 6, 10], [1, 12, 6], [1, 12, 12]]
    assert family.image_token_counts(config, inputs) == [15, 18, 36]
    assert [family.image_token_count(config, image, tiny.processor) for image in images] == [15, 18, 36]
    assert inputs["pixel_values"].shape == (60 + 72 + 144, 3 * 2 * 4 * 4)
    with pytest.raises(ValueError, match="depends on the image's size"):
        family.image_token_count(config)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("vision_source", ["vision_tower", "projector"])
def test_identity_at_initialisation(tiny, variant, vision_source):
    model = ours(tiny.plain, PostDecoderConfig(variant=variant, vision_source=vision_source))
    inputs = batch(model, tiny.tokenizer, tiny.processor, mixed_samples())
    with torch.no_grad():
        logits = model(**inputs).logits
    assert torch.allclose(logits, tiny.plain_logits(inputs), atol=1e-6, rtol=0)
    assert (logits - tiny.plain_logits(inputs)).abs().max() <= 1e-6


@pytest.mark.parametrize("vision_source", ["vision_tower", "projector"])
def test_each_sample_sees_its_own_images_in_the_documented_order(tiny, vision_source):
    model = ours(tiny.plain, PostDecoderConfig(vision_source=vision_source))
    samples = mixed_samples()
    inputs = batch(model, tiny.tokenizer, tiny.processor, samples)
    with torch.no_grad():
        backbone = model.backbone_forward(**inputs)
        image_outputs = model.model.get_image_features(
            inputs["pixel_values"], inputs["image_grid_thw"], return_dict=True
        )
    merged = list(image_outputs.pooler_output)  # the model's own image tokens, one tensor per image
    rows = 1 if vision_source == "projector" else 4
    counts = [len(tokens) for tokens in merged]
    assert counts == family_for(model).image_token_counts(model.config, inputs)
    assert counts[0] != counts[1]  # dynamic resolution: different sizes, different counts
    per_sample = [[0], [], [1], [2, 3]]
    assert backbone.vision_mask.sum(1).tolist() == [rows * sum(counts[i] for i in own) for own in per_sample]
    assert backbone.vision_mask.shape[1] == max(backbone.vision_mask.sum(1).tolist())
    expected_width = model.post_decoder.config.vision_hidden_size
    assert backbone.vision_features.shape[-1] == expected_width
    for sample, own in enumerate(per_sample):
        features = backbone.vision_features[sample][backbone.vision_mask[sample]]
        if vision_source == "projector":
            assert torch.equal(features, torch.cat([merged[i] for i in own]) if own else features)
        elif own:
            # The patch order the block sees: the merger applied to it gives the model's image tokens, in order
            # (for Qwen2.5-VL only once the window order is undone).
            assert torch.allclose(model.model.visual.merger(features), torch.cat([merged[i] for i in own]), atol=1e-6)
    assert not backbone.vision_mask[1].any()  # the text-only sample


def test_a_text_only_sample_passes_the_block_unchanged(tiny):
    model = ours(tiny.plain, "post_interaction", perturb=0.5)
    inputs = batch(model, tiny.tokenizer, tiny.processor, mixed_samples())
    with torch.no_grad():
        logits = model(**inputs).logits
    plain = tiny.plain_logits(inputs)
    real = inputs["attention_mask"][1].bool()
    assert torch.allclose(logits[1][real], plain[1][real], atol=1e-5)
    assert not torch.allclose(logits[0], plain[0], atol=1e-3)  # the block does act on samples with an image


def test_a_sample_alone_gets_the_logits_it_gets_in_a_batch(tiny):
    model = ours(tiny.plain, "post_interaction", perturb=0.5)
    samples = mixed_samples()
    together = batch(model, tiny.tokenizer, tiny.processor, samples)
    with torch.no_grad():
        batched = model(**together).logits
        for index, sample in enumerate(samples):
            alone = batch(model, tiny.tokenizer, tiny.processor, [sample])
            logits = model(**alone).logits[0]
            real = together["attention_mask"][index].bool()
            # (a perturbed block amplifies float noise from the padded vision keys: logits of size ~20 agree to 1e-5)
            assert torch.allclose(batched[index][real], logits, atol=1e-3), index


@pytest.mark.parametrize("variant", ["post_interaction", "transformer_block"])
def test_cached_greedy_generation_equals_recomputation(tiny, variant):
    model = ours(tiny.plain, variant, perturb=0.3)
    inputs = batch(model, tiny.tokenizer, tiny.processor, mixed_samples())
    width = inputs["input_ids"].shape[1]
    settings = dict(max_new_tokens=6, do_sample=False, pad_token_id=tiny.tokenizer.pad_token_id)
    with eos_banned(model), torch.no_grad():
        cached = model.generate(**inputs, use_cache=True, **settings)[:, width:]
        recomputed = model.generate(**inputs, use_cache=False, **settings)[:, width:]
        without_positions = {key: value for key, value in inputs.items() if key != "position_ids"}
        own_positions = model.generate(**without_positions, **settings)[:, width:]
    assert cached.tolist() == recomputed.tolist() == own_positions.tolist()
    assert len({tuple(row) for row in cached.tolist()}) > 1
    assert model.model.rope_deltas is None  # no state kept between calls


def test_greedy_decoding_by_hand_with_the_family_positions_equals_generate(tiny):
    """Each step recomputed from scratch with the positions `continued_position_ids` gives: M-RoPE right."""
    model = ours(tiny.plain, "post_interaction", perturb=0.3)
    family = family_for(model)
    inputs = batch(model, tiny.tokenizer, tiny.processor, mixed_samples()[:1])
    width = inputs["input_ids"].shape[1]
    with eos_banned(model), torch.no_grad():
        generated = model.generate(**inputs, max_new_tokens=4, do_sample=False)[0, width:].tolist()
        ids, by_hand = inputs["input_ids"], []
        output = model(**inputs, use_cache=True)
        cache, state = output.cache if hasattr(output, "cache") else output.past_key_values, output.post_decoder_state
        for _ in range(4):
            token = output.logits[0, -1].argmax().item()
            by_hand.append(token)
            step = torch.tensor([[token]])
            positions = (
                family.continued_position_ids(torch.ones_like(step), inputs["position_ids"], inputs["attention_mask"])
                + len(by_hand)
                - 1
            )
            from post_decoder.compat import CACHE_KWARG

            output = model(input_ids=step, position_ids=positions, use_cache=True, post_decoder_state=state,
                           **{CACHE_KWARG: cache})  # fmt: skip
            ids = torch.cat([ids, step], dim=1)
    assert by_hand == generated
    prompt_max = inputs["position_ids"][:, 0][:, inputs["attention_mask"][0].bool()].max().item()
    first = family.continued_position_ids(torch.ones(1, 1), inputs["position_ids"], inputs["attention_mask"])
    assert first.shape == (3, 1, 1) and first.flatten().tolist() == [prompt_max + 1] * 3
    assert prompt_max + 1 < width  # the image's grid takes fewer positions than its tokens


def test_continuing_a_cache_without_positions_is_refused(tiny):
    model = ours(tiny.plain, "post_interaction")
    inputs = batch(model, tiny.tokenizer, tiny.processor, mixed_samples()[:1])
    with torch.no_grad():
        output = model(**inputs, use_cache=True)
        from post_decoder.compat import CACHE_KWARG, output_cache

        with pytest.raises(ValueError, match="continued_position_ids"):
            model(input_ids=torch.tensor([[5]]), use_cache=True, **{CACHE_KWARG: output_cache(output)})
    with pytest.raises(ValueError, match="prompt_position_ids"):
        family_for(model).position_ids(inputs["attention_mask"])


def test_saved_merged_and_block_alone_and_auto_classes(tiny, tmp_path):
    import post_decoder  # noqa: F401  (registers the Auto classes)

    model = ours(tiny.plain, "post_interaction", perturb=0.3)
    inputs = batch(model, tiny.tokenizer, tiny.processor, mixed_samples())
    with torch.no_grad():
        expected = model(**inputs).logits
    merged = tmp_path / "merged"
    model.save_pretrained(merged)
    tiny.tokenizer.save_pretrained(merged)
    tiny.processor.save_pretrained(merged)
    auto = AutoModelForImageTextToText.from_pretrained(merged).eval()
    assert type(auto) is type(model)
    tokenizer, loaded, processor, _ = load_pretrained_model(str(merged))
    block_only = tmp_path / "block"
    save_post_decoder(model.post_decoder, str(block_only))
    _, from_base, _, _ = load_pretrained_model(str(block_only), model_base=tiny.folder)
    with torch.no_grad():
        for other in (auto, loaded, from_base):
            assert torch.allclose(other(**inputs).logits, expected, atol=1e-6)
    assert processor.size == tiny.processor.size and len(tokenizer) == len(tiny.tokenizer)


def test_hub_folders_load_with_or_without_a_new_block(tiny):
    import json
    import os

    from safetensors import safe_open

    index = json.load(open(os.path.join(tiny.folder, "model.safetensors.index.json")))["weight_map"]
    if tiny.version != "qwen3_vl":  # the hub's names for Qwen2-VL and Qwen2.5-VL
        assert any(key.startswith("visual.") for key in index)
        assert any(key.startswith("model.layers.") for key in index)
        assert family_for(tiny.plain).key_layout({}, list(index), "here").name == "Qwen-VL (hub keys)"
    shard = os.path.join(tiny.folder, sorted(set(index.values()))[0])
    with safe_open(shard, "pt") as handle:
        assert all(not key.startswith("model.language_model.") or tiny.version == "qwen3_vl" for key in handle.keys())
    tokenizer, plain, processor, _ = load_pretrained_model(tiny.folder)
    _, with_block, _, _ = load_pretrained_model(tiny.folder, post_decoder="post_interaction")
    assert plain.post_decoder is None and with_block.post_decoder is not None
    inputs = batch(plain, tokenizer, processor, mixed_samples())
    with torch.no_grad():
        assert torch.allclose(plain(**inputs).logits, tiny.plain_logits(inputs), atol=1e-6)
        assert torch.allclose(with_block(**inputs).logits, tiny.plain_logits(inputs), atol=1e-6)


def test_min_and_max_pixels_reach_the_processor(tiny):
    _, model, processor, _ = load_pretrained_model(tiny.folder, max_pixels=16 * 16)
    family = family_for(model)
    # 40x24 under 256 pixels: 16x8 (the resize rule keeps the aspect), 2 tokens of 8x8 pixels
    assert family.image_token_counts(model.config, family.image_inputs([picture(40, 24)], processor)) == [2]
    _, _, processor, _ = load_pretrained_model(tiny.folder, min_pixels=32 * 32)
    assert family.image_token_count(model.config, picture(8, 8), processor) == 16
    with pytest.raises(InputError, match="min_pixels 4096 is above max_pixels"):
        load_pretrained_model(tiny.folder, min_pixels=64 * 64)


def test_llava_refuses_pixel_bounds(pope_workspace):
    with pytest.raises(InputError, match="--max_pixels: LLaVA-1.5 resizes every image to one size"):
        load_pretrained_model(str(pope_workspace / "model"), max_pixels=1000)
