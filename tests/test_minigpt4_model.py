"""MiniGPT-4 (both versions: Llama-2's without a Q-Former, Vicuna's with one) as transformers' BLIP-2 with a block:
identity at initialisation, the vision tensors the block reads, cached generation, batches, saving and loading."""

import pytest
import torch
from transformers import AutoModelForImageTextToText, Blip2Config, Blip2ForConditionalGeneration

from post_decoder import VARIANTS
from post_decoder.block.files import save_post_decoder
from post_decoder.builder import load_pretrained_model
from post_decoder.families.minigpt4 import MiniGPT4ForConditionalGeneration
from post_decoder.families.minigpt4.image_processing import minigpt4_image_processor
from post_decoder.families.minigpt4.tiny import (
    make_tiny_minigpt4,
    minigpt4_batch,
    tiny_minigpt4_tokenizer,
    train_tiny_minigpt4_tokenizer,
    with_block,
)
from post_decoder.family import family_for
from post_decoder.inference import answer_batch
from post_decoder.saving import save_model_folder

QUESTIONS = ["Is there a dog in the image?", "Describe the image in detail.", "Is there a cup?"]
VERSIONS = {"llama2": False, "vicuna0": True}


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    directory = str(tmp_path_factory.mktemp("minigpt4_tokenizer"))
    train_tiny_minigpt4_tokenizer(directory)
    return directory


@pytest.fixture(scope="module")
def tokenizer(tokenizer_dir):
    return tiny_minigpt4_tokenizer(tokenizer_dir)


@pytest.fixture(scope="module", params=list(VERSIONS))
def plain(request, tokenizer):
    return make_tiny_minigpt4(len(tokenizer) - 2, has_qformer=VERSIONS[request.param])


def no_eos(model, vocabulary: int):
    """Greedy decoding that never stops early and stays in the tokenizer's vocabulary: EOS's logit and those of
    the embedding rows past the vocabulary (padding to a multiple of 64) are pushed far down."""
    banned = torch.tensor([2, *range(vocabulary, model.config.text_config.vocab_size)])
    return model.lm_head.register_forward_hook(lambda module, inputs, output: output.index_fill(-1, banned, -1e9))


@pytest.mark.parametrize("vision_source", ["vision_tower", "projector"])
@pytest.mark.parametrize("variant", VARIANTS)
def test_logits_at_initialisation_equal_the_plain_model(plain, tokenizer, variant, vision_source):
    model = with_block(plain, variant, vision_source=vision_source)
    batch = minigpt4_batch(model, tokenizer, QUESTIONS, with_image=[True, False, True])
    with torch.no_grad():
        expected = plain(**batch).logits
        actual = model(**batch).logits
    assert (actual - expected).abs().max().item() <= 1e-6
    # A trained block changes the image rows (so the comparison above has something to see).
    moved = with_block(plain, variant, perturb=0.3, vision_source=vision_source)
    with torch.no_grad():
        assert (moved(**batch).logits[0] - expected[0]).abs().max().item() > 1e-3


def test_the_plain_vicuna_version_is_transformers_blip2(tokenizer):
    """Without a block, the Vicuna version's logits are those of transformers' own class on the same weights."""
    plain = make_tiny_minigpt4(len(tokenizer) - 2, has_qformer=True)
    values = {
        key: value
        for key, value in plain.config.to_dict().items()
        if key not in ("model_type", "has_qformer", "ln_vision_eps")
    }
    values.pop("post_decoder_config", None)
    library = Blip2ForConditionalGeneration(Blip2Config(**values)).eval()
    library.vision_model.post_layernorm.eps = 1e-5  # MiniGPT-4's ln_vision's (see MiniGPT4Config.ln_vision_eps)
    library.load_state_dict(plain.state_dict())
    batch = minigpt4_batch(plain, tokenizer, QUESTIONS[:1])
    with torch.no_grad():
        torch.testing.assert_close(plain(**batch).logits, library(**batch).logits, atol=1e-6, rtol=0)


def test_the_block_reads_ln_vision_of_the_vit_and_llama2_tokens_are_four_patches(tokenizer):
    """vision_tower: BLIP-2's `vision_model(...).last_hidden_state` (post_layernorm = MiniGPT-4's ln_vision on the
    ViT's last block), every token with CLS; the Llama-2 version's image token j is llama_proj of patches 4j..4j+3."""
    plain = make_tiny_minigpt4(len(tokenizer) - 2, has_qformer=False)
    pixels = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        vision, tokens = plain.encode_images(pixels)
        vit = plain.vision_model
        blocks = vit.encoder(inputs_embeds=vit.embeddings(pixels)).last_hidden_state  # the ViT's last block
        ln_vision = torch.nn.functional.layer_norm(
            blocks,
            (blocks.shape[-1],),
            plain.vision_model.post_layernorm.weight,
            plain.vision_model.post_layernorm.bias,
            1e-5,  # MiniGPT-4's ln_vision: torch's LayerNorm
        )
    assert vision.shape == (2, 17, 176) and tokens.shape == (2, 4, 64)
    torch.testing.assert_close(vision, ln_vision)
    weight, bias = plain.language_projection.weight, plain.language_projection.bias
    for j in range(4):
        side_by_side = torch.cat([vision[:, 1 + 4 * j + k] for k in range(4)], dim=-1)
        torch.testing.assert_close(tokens[:, j], side_by_side @ weight.T + bias)
    model = with_block(plain, "post_interaction")
    batch = minigpt4_batch(model, tokenizer, QUESTIONS[:2], with_image=[True, False])
    batch["pixel_values"] = pixels[:1]
    with torch.no_grad():
        backbone = model.backbone_forward(**batch)
    assert torch.equal(backbone.vision_features[0], vision[0])
    assert backbone.vision_mask.tolist() == [[True] * 17, [False] * 17]


def recomputed_greedy(model, batch, steps):
    """Greedy decoding without a cache: the whole sequence and the image go in at every step."""
    input_ids, mask = batch["input_ids"], batch["attention_mask"]
    for _ in range(steps):
        with torch.no_grad():
            logits = model(input_ids=input_ids, attention_mask=mask, pixel_values=batch["pixel_values"]).logits
        token = logits[:, -1].argmax(-1, keepdim=True)
        input_ids, mask = torch.cat([input_ids, token], 1), torch.cat([mask, torch.ones_like(token)], 1)
    return input_ids[:, batch["input_ids"].shape[1] :]


@pytest.mark.parametrize("variant", VARIANTS)
def test_cached_generation_equals_recomputation(plain, tokenizer, variant):
    model = with_block(plain, variant, perturb=0.3)
    batch = minigpt4_batch(model, tokenizer, QUESTIONS[:1])
    steps = 8
    handle = no_eos(model, len(tokenizer))
    try:
        with torch.no_grad():
            generated = model.generate(**batch, max_new_tokens=steps, do_sample=False)
            reference = recomputed_greedy(model, batch, steps)
            without_block = (
                family_for(model).block_bypassed(model).generate(**batch, max_new_tokens=steps, do_sample=False)
            )
    finally:
        handle.remove()
    cached = generated[:, batch["input_ids"].shape[1] :]
    assert cached.shape[1] == steps
    assert cached.tolist() == reference.tolist()
    assert without_block[:, batch["input_ids"].shape[1] :].tolist() != cached.tolist()  # the block mattered


@pytest.mark.parametrize("variant", ["post_interaction", "transformer_block"])
def test_a_batch_of_questions_answers_as_one_by_one(plain, tokenizer, variant):
    model = with_block(plain, variant, perturb=0.3)
    processor = minigpt4_image_processor(32)
    generator = torch.Generator().manual_seed(3)
    from PIL import Image

    images = [
        Image.fromarray((torch.rand(40 + 8 * i, 48, 3, generator=generator) * 255).byte().numpy()) for i in range(3)
    ]
    handle = no_eos(model, len(tokenizer))
    try:
        together = answer_batch(model, tokenizer, processor, images, QUESTIONS, batch_size=3, max_new_tokens=6)
        alone = [
            answer_batch(model, tokenizer, processor, [i], [q], max_new_tokens=6)[0] for i, q in zip(images, QUESTIONS)
        ]
    finally:
        handle.remove()
    assert together == alone
    assert all(together)


def logits(model, tokenizer):
    batch = minigpt4_batch(model, tokenizer, QUESTIONS[:2])
    with torch.no_grad():
        return model(**batch).logits


def test_saved_merged_and_alone_and_reloaded(plain, tokenizer, tmp_path):
    model = with_block(plain, "post_interaction", perturb=0.2, num_layers=2, vision_source="projector")
    processor = minigpt4_image_processor(32)
    expected = logits(model, tokenizer)

    merged = str(tmp_path / "merged")
    save_model_folder(model, tokenizer, processor, merged)
    loaded_tokenizer, loaded, loaded_processor, _ = load_pretrained_model(merged)
    assert isinstance(loaded, MiniGPT4ForConditionalGeneration)
    assert loaded.config.has_qformer == plain.config.has_qformer
    assert loaded.post_decoder.config.num_layers == 2 and loaded.post_decoder.config.vision_source == "projector"
    assert loaded_tokenizer("[INST] a").input_ids == tokenizer("[INST] a").input_ids
    assert loaded_processor.size == processor.size
    assert torch.equal(logits(loaded, loaded_tokenizer), expected)
    assert torch.equal(logits(AutoModelForImageTextToText.from_pretrained(merged).eval(), tokenizer), expected)

    base, block = str(tmp_path / "base"), str(tmp_path / "block")
    save_model_folder(plain, tokenizer, processor, base)
    save_post_decoder(model.post_decoder, block)
    _, on_base, _, _ = load_pretrained_model(block, model_base=base)
    assert torch.equal(logits(on_base, tokenizer), expected)
    _, fresh, _, _ = load_pretrained_model(base, post_decoder="align_linear")
    assert torch.equal(logits(fresh, tokenizer), logits(plain, tokenizer))
