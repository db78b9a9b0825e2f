"""InstructBLIP with the block (tiny models, fp32): the identity at initialisation, the vision features the block
reads, and generation on the model's own forward (not InstructBLIP's hand-off to its inner language model), equal
to transformers' InstructBLIP `generate` at the identity; POPE's evaluator on an image's questions."""

import copy

import pytest
import torch
from PIL import Image
from transformers import InstructBlipConfig, InstructBlipVisionConfig, T5Config

from eval.answering import PrefixCachedAnswerer
from post_decoder import VARIANTS
from post_decoder.compat import CACHE_KWARG, output_cache
from post_decoder.families.instructblip import INSTRUCTBLIP, InstructBlipPostDecoderForConditionalGeneration
from post_decoder.families.instructblip.configuration import InstructBlipPostDecoderConfig
from post_decoder.families.instructblip.tiny import (
    make_qformer_tokenizer,
    make_tiny_instructblip,
    question_batch,
    tiny_processor,
    train_language_tokenizer,
    with_block,
)
from post_decoder.family import family_for

QUESTIONS = ["Is there a dog in the image?", "Describe this image in detail.", "Is there a cat in the image?"]


@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory):
    directory = tmp_path_factory.mktemp("instructblip_tokenizers")
    return train_language_tokenizer(str(directory / "llm")), make_qformer_tokenizer(str(directory / "qformer"))


@pytest.fixture(scope="module")
def plain(tokenizers):
    return make_tiny_instructblip(*tokenizers)


@pytest.fixture(scope="module")
def processor(tokenizers, plain):
    return tiny_processor(*tokenizers, plain.config)


def pictures(count: int, seed: int = 0) -> list[Image.Image]:
    generator = torch.Generator().manual_seed(seed)
    return [
        Image.fromarray(torch.randint(0, 256, (30 + 5 * index, 40, 3), generator=generator).byte().numpy())
        for index in range(count)
    ]


def mixed_batch(model, processor):
    """Three questions, the middle one without an image: each sample's image found by its image tokens."""
    first, third = pictures(2)
    return question_batch(model, processor, [first, None, third], QUESTIONS)


@pytest.mark.parametrize("vision_source", ["vision_tower", "projector"])
@pytest.mark.parametrize("variant", VARIANTS)
def test_logits_at_initialisation_equal_plain_instructblip(plain, processor, variant, vision_source):
    model = with_block(plain, variant, vision_source=vision_source)
    batch = mixed_batch(model, processor)
    with torch.no_grad():
        expected = plain(**batch).logits
        actual = model(**batch).logits
    assert actual.shape == expected.shape
    assert (actual - expected).abs().max().item() <= 1e-6


def test_the_block_reads_the_vision_encoder_after_its_final_layer_norm(plain, processor):
    """LAVIS's `ln_vision(visual_encoder(image))`: transformers' conversion maps `ln_vision` to
    `vision_model.post_layernorm`, applied to the last encoder layer's output (CLS and patches)."""
    model = with_block(plain, "post_interaction", perturb=0.05)
    batch = mixed_batch(model, processor)
    vision_model = plain.vision_model
    with torch.no_grad():
        encoded = vision_model.encoder(vision_model.embeddings(batch["pixel_values"])).last_hidden_state
        expected = vision_model.post_layernorm(encoded)  # [images, 1 + patches, width]
        backbone = model.backbone_forward(**batch)
    patches = (plain.config.vision_config.image_size // plain.config.vision_config.patch_size) ** 2
    assert expected.shape == (2, 1 + patches, plain.config.vision_config.hidden_size)
    assert model.post_decoder.config.vision_hidden_size == plain.config.vision_config.hidden_size
    assert backbone.vision_mask.sum(1).tolist() == [1 + patches, 0, 1 + patches]
    torch.testing.assert_close(backbone.vision_features[0], expected[0], atol=0, rtol=0)
    torch.testing.assert_close(backbone.vision_features[2], expected[1], atol=0, rtol=0)
    # At full size (EVA ViT-g, 224 pixels, 14-pixel patches) that is [257, 1408] per image.
    full = InstructBlipVisionConfig()
    assert ((full.image_size // full.patch_size) ** 2 + 1, full.hidden_size) == (257, 1408)


@pytest.mark.parametrize("vision_source", ["vision_tower", "projector"])
def test_logits_are_the_head_on_the_block_over_the_language_models_hidden_states(plain, processor, vision_source):
    """Worked out apart from the plain model: its language model's last hidden states, and the vision encoder's
    output (or the 32 projected query outputs), through the block and lm_head."""
    model = with_block(plain, "post_interaction", perturb=0.1, vision_source=vision_source)
    first, second = pictures(2)
    batch = question_batch(model, processor, [first, second], QUESTIONS[:2])
    with torch.no_grad():
        output = model(**batch)
        hidden = plain(**batch, output_hidden_states=True).language_model_outputs.hidden_states[-1]
        qformer = {key: batch[key] for key in ("qformer_input_ids", "qformer_attention_mask")}
        image = plain.get_image_features(batch["pixel_values"], **qformer, return_dict=True)
        features = image.pooler_output if vision_source == "projector" else image.last_hidden_state
        state = model.post_decoder.encode_vision(features, None, batch_size=2)
        expected = plain.language_model.lm_head(model.post_decoder(hidden, state)[0])
    if vision_source == "projector":
        assert features.shape == (2, plain.config.num_query_tokens, plain.config.text_config.hidden_size)
    torch.testing.assert_close(output.logits, expected, atol=1e-5, rtol=1e-5)
    assert (output.logits - plain(**batch).logits).abs().max().item() > 1e-3  # the block mattered


def test_loss_and_logits_to_keep(plain, processor):
    model = with_block(plain, "post_interaction", perturb=0.1)
    batch = mixed_batch(model, processor)
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    with torch.no_grad():
        full = model(**batch, labels=labels)
        last = model(**batch, logits_to_keep=1)
    torch.testing.assert_close(last.logits[:, -1], full.logits[:, -1], atol=1e-5, rtol=1e-5)
    vocab = full.logits.shape[-1]
    expected = torch.nn.functional.cross_entropy(
        full.logits[:, :-1].reshape(-1, vocab), labels[:, 1:].reshape(-1), ignore_index=-100
    )
    torch.testing.assert_close(full.loss, expected, atol=1e-5, rtol=1e-5)


def greedy_by_recomputation(model, batch, steps, eos_token_id):
    """Greedy decoding with no cache: the whole sequence, the image and the question go in at every step
    (EOS forbidden, as `min_new_tokens` forbids it in `generate`)."""
    input_ids, attention_mask = batch["input_ids"], batch["attention_mask"]
    for _ in range(steps):
        with torch.no_grad():
            logits = model(**{**batch, "input_ids": input_ids, "attention_mask": attention_mask}).logits[:, -1]
        logits[:, eos_token_id] = -float("inf")
        next_token = logits.argmax(-1, keepdim=True)
        input_ids = torch.cat([input_ids, next_token], dim=1)
        attention_mask = torch.cat([attention_mask, torch.ones_like(next_token)], dim=1)
    return input_ids[:, batch["input_ids"].shape[1] :]


@pytest.mark.parametrize("variant", VARIANTS)
def test_cached_generation_equals_recomputation(plain, processor, variant):
    """generate's decode steps run on our forward: the block's state rides with the KV cache."""
    model = with_block(plain, variant, perturb=0.3)  # far enough from the identity to change greedy answers
    batch = mixed_batch(model, processor)
    steps, width = 8, batch["input_ids"].shape[1]
    with torch.no_grad():
        generated = model.generate(**batch, max_new_tokens=steps, min_new_tokens=steps, do_sample=False)
        uncached = model.generate(
            **batch, max_new_tokens=steps, min_new_tokens=steps, do_sample=False, use_cache=False
        )
        plain_answers = plain.generate(**batch, max_new_tokens=steps, min_new_tokens=steps, do_sample=False)
    cached = generated[:, width:]
    assert (
        cached.tolist() == greedy_by_recomputation(model, batch, steps, model.config.text_config.eos_token_id).tolist()
    )
    assert uncached[:, width:].tolist() == cached.tolist()
    # The block mattered on the image rows, and left the text-only row as the plain model's.
    assert plain_answers[1, width:].tolist() == cached[1].tolist()
    assert plain_answers[[0, 2], width:].tolist() != cached[[0, 2]].tolist()


def test_generation_at_initialisation_equals_plain_generation_beams_included(plain, processor):
    """Our decoding loop on the outer model gives transformers' InstructBLIP's answers, beams included."""
    model = with_block(plain, "post_interaction")
    batch = mixed_batch(model, processor)
    for settings in ({"do_sample": False}, {"num_beams": 3, "do_sample": False}):
        with torch.no_grad():
            ours = model.generate(**batch, max_new_tokens=6, **settings)
            theirs = plain.generate(**batch, max_new_tokens=6, **settings)
        assert ours.tolist() == theirs.tolist()


def test_beam_search_is_refused_for_the_self_attention_variant(plain, processor):
    model = with_block(plain, "transformer_block", perturb=0.05)
    batch = mixed_batch(model, processor)
    with pytest.raises(NotImplementedError, match="beam search is not supported with the transformer_block"):
        model.generate(**batch, max_new_tokens=2, num_beams=2)


@pytest.mark.parametrize("variant", ["post_interaction", "transformer_block"])
def test_questions_about_one_image_batched_answer_as_one_by_one(plain, processor, variant):
    model = with_block(plain, variant, perturb=0.05)
    (image,) = pictures(1, seed=3)
    batch = question_batch(model, processor, [image] * len(QUESTIONS), QUESTIONS)
    with torch.no_grad():
        together = model.generate(**batch, max_new_tokens=6, min_new_tokens=6, do_sample=False)
    together = together[:, batch["input_ids"].shape[1] :]
    for index, question in enumerate(QUESTIONS):
        alone = question_batch(model, processor, [image], [question])
        with torch.no_grad():
            single = model.generate(**alone, max_new_tokens=6, min_new_tokens=6, do_sample=False)
        assert single[0, alone["input_ids"].shape[1] :].tolist() == together[index].tolist()


@pytest.mark.parametrize("variant", ["post_interaction", "transformer_block"])
def test_generate_continues_a_cached_prompt(plain, processor, variant):
    """What an evaluator does: the prompt once through the model (image, Q-Former, language model), then
    `generate` continues from its KV cache and the block's state, with no image."""
    model = with_block(plain, variant, perturb=0.05)
    (image,) = pictures(1, seed=4)
    batch = question_batch(model, processor, [image], QUESTIONS[:1])
    with torch.no_grad():
        expected = model.generate(**batch, max_new_tokens=6, min_new_tokens=6, do_sample=False)
        prompt = {**batch, "input_ids": batch["input_ids"][:, :-1], "attention_mask": batch["attention_mask"][:, :-1]}
        prefix = model(**prompt, use_cache=True)
        continued = model.generate(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            **{CACHE_KWARG: output_cache(prefix)},
            post_decoder_state=prefix.post_decoder_state,
            max_new_tokens=6,
            min_new_tokens=6,
            do_sample=False,
        )
    assert continued.tolist() == expected.tolist()


def test_the_block_can_be_bypassed_and_copies_keep_their_own_block(plain, processor):
    model = with_block(plain, "post_interaction", perturb=0.1)
    family = family_for(model)
    assert family is INSTRUCTBLIP
    base = family.block_bypassed(model)
    assert base.post_decoder is None and model.post_decoder is not None
    assert base.language_model is model.language_model
    batch = mixed_batch(model, processor)
    with torch.no_grad():
        torch.testing.assert_close(base(**batch).logits, plain(**batch).logits)
        assert base.generate(**batch, max_new_tokens=4).tolist() == plain.generate(**batch, max_new_tokens=4).tolist()
        trained = model.generate(**batch, max_new_tokens=4, min_new_tokens=4)
        twin = copy.deepcopy(model)
        assert twin.generate(**batch, max_new_tokens=4, min_new_tokens=4).tolist() == trained.tolist()
        twin.post_decoder = None  # a copy's block is its own
        assert model.generate(**batch, max_new_tokens=4, min_new_tokens=4).tolist() == trained.tolist()


def test_an_encoder_decoder_instructblip_is_refused():
    t5 = T5Config(d_model=16, d_ff=32, num_layers=1, num_heads=2, d_kv=8, vocab_size=64)
    config = InstructBlipPostDecoderConfig(text_config=t5.to_dict(), vision_config={"hidden_size": 16})
    with pytest.raises(ValueError, match="needs a decoder-only language model; this InstructBLIP's is 't5'"):
        InstructBlipPostDecoderForConditionalGeneration(config)
    assert InstructBlipConfig(text_config=t5.to_dict()).use_decoder_only_language_model is False


@pytest.mark.parametrize("variant", [None, "post_interaction", "transformer_block"])
def test_pope_style_answers_encode_the_image_once_and_equal_one_by_one_generate(plain, processor, variant):
    """POPE's evaluator: the Q-Former reads the question, so no prompt prefix is shared; the vision encoder's output
    is (it runs once for the image's questions, in batches of 3)."""
    model = with_block(plain, variant or "post_interaction", perturb=0.05)
    if variant is None:
        model.post_decoder, model.config.post_decoder_config = None, None
    (image,) = pictures(1, seed=5)
    questions = QUESTIONS + ["Is there a person in the image?"]
    calls = []
    hook = model.vision_model.register_forward_hook(lambda *args: calls.append(1))
    try:
        answerer = PrefixCachedAnswerer(model, processor.tokenizer, processor, max_new_tokens=5, batch_size=3)
        answers = answerer.answer(image, questions)
    finally:
        hook.remove()
    assert len(calls) == 1
    tokenizer = processor.tokenizer
    for question, answer in zip(questions, answers):
        alone = question_batch(model, processor, [image], [question])
        with torch.no_grad():
            single = model.generate(**alone, max_new_tokens=5, do_sample=False, pad_token_id=tokenizer.pad_token_id)
        width = alone["input_ids"].shape[1]
        assert answer == tokenizer.decode(single[0, width:], skip_special_tokens=True).strip()
    assert any(answers)  # something was said
