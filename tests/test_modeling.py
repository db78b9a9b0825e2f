import pytest
import torch

from post_decoder import VARIANTS
from tests.helpers import eos_banned, image_batch, with_block

QUESTIONS = ["Is there a dog in the image?", "Describe the image in detail.", "Is there a cup?"]


@pytest.mark.parametrize("variant", VARIANTS)
def test_logits_at_initialisation_equal_plain_llava(plain_llava, llava_tokenizer, variant):
    model = with_block(plain_llava, variant)
    batch = image_batch(model, llava_tokenizer, QUESTIONS, with_image=[True, False, True])
    with torch.no_grad():
        expected = plain_llava(**batch).logits
        actual = model(**batch).logits
    assert (actual - expected).abs().max().item() <= 1e-6


@pytest.mark.parametrize("variant", VARIANTS)
def test_a_trained_block_changes_the_image_rows_of_a_mixed_batch_only(plain_llava, llava_tokenizer, variant):
    """The forward passes the vision mask to the block: a text-only row, batched with image rows, is
    plain LLaVA's (logits and greedy continuation), though a trained block changes every image row."""
    model = with_block(plain_llava, variant, perturb=0.3)
    batch = image_batch(model, llava_tokenizer, QUESTIONS, with_image=[True, False, True])
    text_only, image_rows = 1, [0, 2]
    with torch.no_grad():
        expected = plain_llava(**batch).logits
        actual = model(**batch).logits
        plain_answers = plain_llava.generate(**batch, max_new_tokens=4, do_sample=False)
        answers = model.generate(**batch, max_new_tokens=4, do_sample=False)
    assert (actual[text_only] - expected[text_only]).abs().max().item() <= 1e-5
    assert answers[text_only].tolist() == plain_answers[text_only].tolist()
    for row in image_rows:
        assert (actual[row] - expected[row]).abs().max().item() > 1e-2


@pytest.mark.parametrize("variant", VARIANTS)
def test_loss_and_logits_to_keep_follow_llava(plain_llava, llava_tokenizer, variant):
    model = with_block(plain_llava, variant, perturb=0.2)
    batch = image_batch(model, llava_tokenizer, QUESTIONS[:2], padding_side="right")
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    with torch.no_grad():
        full = model(**batch, labels=labels)
        last = model(**batch, logits_to_keep=1)
    assert full.logits.shape[1] == batch["input_ids"].shape[1]
    torch.testing.assert_close(last.logits[:, -1], full.logits[:, -1], atol=1e-5, rtol=1e-5)
    vocab = full.logits.shape[-1]
    expected_loss = torch.nn.functional.cross_entropy(
        full.logits[:, :-1].reshape(-1, vocab), labels[:, 1:].reshape(-1), ignore_index=-100
    )
    torch.testing.assert_close(full.loss, expected_loss, atol=1e-5, rtol=1e-5)


def full_recomputation_greedy(model, batch, steps):
    """Greedy decoding with no cache: the whole sequence (and the image) goes in at every step."""
    input_ids, attention_mask = batch["input_ids"], batch["attention_mask"]
    for _ in range(steps):
        with torch.no_grad():
            pixel_values = batch.get("pixel_values")
            logits = model(input_ids=input_ids, attention_mask=attention_mask, pixel_values=pixel_values).logits
        next_token = logits[:, -1].argmax(-1, keepdim=True)
        input_ids = torch.cat([input_ids, next_token], dim=1)
        attention_mask = torch.cat([attention_mask, torch.ones_like(next_token)], dim=1)
    return input_ids[:, batch["input_ids"].shape[1] :]


@pytest.mark.parametrize("variant", VARIANTS)
def test_cached_generation_equals_full_recomputation(plain_llava, llava_tokenizer, variant):
    model = with_block(plain_llava, variant, perturb=0.3)
    batch = image_batch(model, llava_tokenizer, QUESTIONS[:1])
    steps = 10
    with torch.no_grad():
        generated = model.generate(**batch, max_new_tokens=steps, min_new_tokens=steps, do_sample=False)
    cached = generated[:, batch["input_ids"].shape[1] :]
    # min_new_tokens only forbids EOS; ban it in the reference too so both decode 10 tokens.
    with eos_banned(model):
        reference = full_recomputation_greedy(model, batch, steps)
    assert cached.tolist() == reference.tolist()
    # And the block mattered: without it the answer differs.
    with torch.no_grad():
        plain = plain_llava.generate(**batch, max_new_tokens=steps, min_new_tokens=steps, do_sample=False)
    assert plain[:, batch["input_ids"].shape[1] :].tolist() != cached.tolist()


@pytest.mark.parametrize("variant", VARIANTS)
def test_left_padded_batch_generates_what_each_sample_generates_alone(plain_llava, llava_tokenizer, variant):
    model = with_block(plain_llava, variant, perturb=0.3)
    batch = image_batch(model, llava_tokenizer, QUESTIONS, seed=1)
    with torch.no_grad():
        together = model.generate(**batch, max_new_tokens=6, min_new_tokens=6, do_sample=False)
    together = together[:, batch["input_ids"].shape[1] :]
    for index in range(len(QUESTIONS)):
        real = batch["attention_mask"][index].bool()
        alone = {
            "input_ids": batch["input_ids"][index : index + 1, real],
            "attention_mask": batch["attention_mask"][index : index + 1, real],
            "pixel_values": batch["pixel_values"][index : index + 1],
        }
        with torch.no_grad():
            single = model.generate(**alone, max_new_tokens=6, min_new_tokens=6, do_sample=False)
        assert single[0, alone["input_ids"].shape[1] :].tolist() == together[index].tolist()


def test_text_only_generation_is_the_plain_model(plain_llava, llava_tokenizer):
    model = with_block(plain_llava, "transformer_block", perturb=0.3)
    batch = image_batch(model, llava_tokenizer, QUESTIONS[:1], with_image=[False])
    with torch.no_grad():
        ours = model.generate(**batch, max_new_tokens=5, do_sample=False)
        plain = plain_llava.generate(**batch, max_new_tokens=5, do_sample=False)
    assert ours.tolist() == plain.tolist()


def test_block_attention_maps_cover_the_image(plain_llava, llava_tokenizer):
    model = with_block(plain_llava, "post_interaction", perturb=0.3)
    batch = image_batch(model, llava_tokenizer, QUESTIONS[:2])
    with torch.no_grad():
        output = model(**batch, output_post_decoder_attentions=True, logits_to_keep=1)
    (probs,) = output.post_decoder_attentions
    image_tokens = model.config.image_seq_length
    assert probs.shape == (2, model.post_decoder.config.num_attention_heads, 1, image_tokens)
    torch.testing.assert_close(probs.sum(-1), torch.ones_like(probs.sum(-1)), atol=1e-5, rtol=1e-5)


def test_projector_output_can_be_the_vision_source(plain_llava, llava_tokenizer):
    model = with_block(plain_llava, "post_interaction", perturb=0.3, vision_source="projector")
    assert model.post_decoder.config.vision_hidden_size == model.config.text_config.hidden_size
    batch = image_batch(model, llava_tokenizer, QUESTIONS[:1])
    with torch.no_grad():
        output = model(**batch)
        # Worked out apart: the plain LLaVA's last hidden states and its projector's output for the image
        # (not the tower's), through the block and lm_head.
        hidden = plain_llava.model(**batch).last_hidden_state
        image = plain_llava.model.get_image_features(pixel_values=batch["pixel_values"], return_dict=True)
        projected = torch.stack(list(image.pooler_output))
        state = model.post_decoder.encode_vision(projected, None, batch_size=1)
        expected = model.lm_head(model.post_decoder(hidden, state, batch["attention_mask"])[0])
    torch.testing.assert_close(output.logits, expected, atol=1e-5, rtol=1e-5)


def test_beam_search_with_the_self_attention_variant_is_refused(plain_llava, llava_tokenizer):
    model = with_block(plain_llava, "transformer_block")
    batch = image_batch(model, llava_tokenizer, QUESTIONS[:1])
    with pytest.raises(NotImplementedError, match="beam search"):
        model.generate(**batch, max_new_tokens=2, num_beams=2)


def test_an_image_without_input_ids_is_refused(plain_llava, llava_tokenizer):
    model = with_block(plain_llava, "post_interaction")
    batch = image_batch(model, llava_tokenizer, QUESTIONS[:1])
    embeds = model.get_input_embeddings()(batch["input_ids"])
    with pytest.raises(ValueError, match="pass input_ids"):
        model(inputs_embeds=embeds, pixel_values=batch["pixel_values"])


def test_generation_encodes_the_image_for_the_block_once(plain_llava, llava_tokenizer, monkeypatch):
    model = with_block(plain_llava, "post_interaction", perturb=0.3)
    calls = []
    original = model.post_decoder.encode_vision

    def counting(vision_features, *args, **kwargs):
        calls.append(vision_features is not None)
        return original(vision_features, *args, **kwargs)

    monkeypatch.setattr(model.post_decoder, "encode_vision", counting)
    batch = image_batch(model, llava_tokenizer, QUESTIONS[:2])
    with torch.no_grad():
        model.generate(**batch, max_new_tokens=5, min_new_tokens=5, do_sample=False)
    assert calls == [True]  # the prefill step; the four decode steps reuse its keys and values


def test_images_are_grouped_by_the_samples_whose_tokens_they_fill():
    from post_decoder.family import pack_images_per_sample

    features = torch.arange(3 * 2 * 1, dtype=torch.float32).view(3, 2, 1)  # 3 images of 2 tokens
    packed, mask = pack_images_per_sample(features, torch.tensor([4, 0, 2]))
    assert packed[:, :, 0].tolist() == [[0, 1, 2, 3], [0, 0, 0, 0], [4, 5, 0, 0]]
    assert mask.tolist() == [[True] * 4, [False] * 4, [True, True, False, False]]
    with pytest.raises(ValueError, match=r"image tokens per sample \[3, 0, 2\] do not match 3 image"):
        pack_images_per_sample(features, torch.tensor([3, 0, 2]))
