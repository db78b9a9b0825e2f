"""post_decoder.inference: one call to ask a question equals the prompt, preprocessing and greedy
`generate` done by hand; the batched form equals the single one."""

import json

import pytest
import torch
from PIL import Image, ImageDraw

from post_decoder.errors import InputError
from post_decoder.families.llava.conversation import question_prompt, tokenize_with_image
from post_decoder.families.llava.image_processing import load_image_processor
from post_decoder.families.llava.tiny import clip_preprocessor_config
from post_decoder.images import preprocess_images
from post_decoder.inference import answer, answer_batch
from tests.helpers import eos_banned, with_block

NEW_TOKENS = 6


@pytest.fixture(scope="module")
def image_processor(tmp_path_factory):
    folder = tmp_path_factory.mktemp("processor")
    (folder / "preprocessor_config.json").write_text(json.dumps(clip_preprocessor_config(32)))
    return load_image_processor(str(folder))


@pytest.fixture(scope="module")
def pictures(tmp_path_factory):
    """Two different images, the second also saved as a file."""
    circle = Image.new("RGB", (64, 48), (30, 60, 200))
    ImageDraw.Draw(circle).ellipse((8, 8, 40, 40), fill=(220, 30, 30))
    square = Image.new("RGB", (40, 70), (240, 240, 20))
    ImageDraw.Draw(square).rectangle((5, 30, 30, 60), fill=(0, 120, 0))
    path = tmp_path_factory.mktemp("images") / "square.png"
    square.save(path)
    return circle, square, str(path)


@pytest.fixture(scope="module")
def block_model(plain_llava):
    return with_block(plain_llava, "post_interaction", perturb=0.3)


def generate_by_hand(model, tokenizer, processor, image, question, conv_mode="vicuna_v1"):
    config = model.config
    prompt = question_prompt(question, with_image=image is not None, conv_mode=conv_mode)
    ids = torch.tensor([tokenize_with_image(prompt, tokenizer, config.image_token_id, config.image_seq_length)])
    extra = {} if image is None else {"pixel_values": preprocess_images([image], processor)}
    with torch.no_grad():
        output = model.generate(
            input_ids=ids, max_new_tokens=NEW_TOKENS, do_sample=False, pad_token_id=tokenizer.pad_token_id, **extra
        )
    return tokenizer.decode(output[0, ids.shape[1] :], skip_special_tokens=True).strip()


@pytest.mark.parametrize("conv_mode", ["vicuna_v1", "llava_v1"])
def test_answer_equals_greedy_generate_with_and_without_a_block(
    plain_llava, block_model, llava_tokenizer, image_processor, pictures, conv_mode
):
    circle, _, _ = pictures
    question = "Is there a dog in the image?"
    answers = {}
    for name, model in (("plain", plain_llava), ("block", block_model)):
        with eos_banned(model):  # whole continuations are compared, never an empty answer
            expected = generate_by_hand(model, llava_tokenizer, image_processor, circle, question, conv_mode)
            answers[name] = answer(
                model,
                llava_tokenizer,
                image_processor,
                circle,
                question,
                conv_mode=conv_mode,
                max_new_tokens=NEW_TOKENS,
            )
        assert answers[name] == expected and expected
    assert answers["plain"] != answers["block"]  # the perturbed block is used: it changes the answer


def test_the_prompt_is_llavas_template_in_the_chosen_mode(
    block_model, llava_tokenizer, image_processor, pictures, monkeypatch
):
    seen = []
    real_generate = block_model.generate
    monkeypatch.setattr(
        block_model,
        "generate",
        lambda **kwargs: seen.append(kwargs["input_ids"][0].tolist()) or real_generate(**kwargs),
    )
    config = block_model.config
    for conv_mode in ("vicuna_v1", "llava_v1"):
        answer(
            block_model,
            llava_tokenizer,
            image_processor,
            pictures[0],
            "Describe the image.",
            conv_mode=conv_mode,
            max_new_tokens=1,
        )
        prompt = question_prompt("Describe the image.", conv_mode=conv_mode)
        assert seen[-1] == tokenize_with_image(prompt, llava_tokenizer, config.image_token_id, config.image_seq_length)
    assert seen[0] != seen[1]


def test_a_path_a_pil_image_and_a_text_only_question(block_model, llava_tokenizer, image_processor, pictures):
    _, square, square_path = pictures
    with eos_banned(block_model):
        from_path = answer(
            block_model, llava_tokenizer, image_processor, square_path, "What is this?", max_new_tokens=NEW_TOKENS
        )
        from_image = answer(
            block_model, llava_tokenizer, image_processor, square, "What is this?", max_new_tokens=NEW_TOKENS
        )
        text_only = answer(
            block_model, llava_tokenizer, image_processor, None, "What is this?", max_new_tokens=NEW_TOKENS
        )
        expected_text_only = generate_by_hand(block_model, llava_tokenizer, image_processor, None, "What is this?")
    assert from_path == from_image
    assert text_only == expected_text_only and text_only != from_image


def test_defaults_are_greedy_with_128_new_tokens_as_llava(
    block_model, llava_tokenizer, image_processor, pictures, monkeypatch
):
    calls = []
    real_generate = block_model.generate

    def spy(**kwargs):
        calls.append(kwargs)
        return real_generate(**{**kwargs, "max_new_tokens": 2})

    monkeypatch.setattr(block_model, "generate", spy)
    answer(block_model, llava_tokenizer, image_processor, pictures[0], "Is there a cat?")
    answer(
        block_model,
        llava_tokenizer,
        image_processor,
        pictures[0],
        "Is there a cat?",
        do_sample=True,
        temperature=0.5,
        max_new_tokens=3,
    )
    assert (calls[0]["do_sample"], calls[0]["max_new_tokens"], calls[0]["pad_token_id"]) == (
        False,
        128,
        llava_tokenizer.pad_token_id,
    )
    assert (calls[1]["do_sample"], calls[1]["temperature"], calls[1]["max_new_tokens"]) == (True, 0.5, 3)


def test_answer_batch_equals_answer_one_by_one(block_model, llava_tokenizer, image_processor, pictures):
    circle, square, square_path = pictures
    images = [circle, None, square_path, square, circle]
    questions = [
        "Is there a dog in the image?",
        "What color is a banana?",  # text-only, in the middle of a batch
        "Describe the image in detail, with every object, its colour and where it is.",
        "Cat?",
        "Is there a red circle next to a blue square on the table?",
    ]
    with eos_banned(block_model):
        one_by_one = [
            answer(block_model, llava_tokenizer, image_processor, image, question, max_new_tokens=NEW_TOKENS)
            for image, question in zip(images, questions)
        ]
        batched = answer_batch(
            block_model, llava_tokenizer, image_processor, images, questions, batch_size=3, max_new_tokens=NEW_TOKENS
        )
    assert batched == one_by_one
    assert len(set(one_by_one)) > 1  # the answers differ: rows were not mixed up unnoticed


def test_bad_input_names_what_to_fix(block_model, llava_tokenizer, image_processor, pictures, tmp_path):
    circle = pictures[0]
    missing = str(tmp_path / "no_such.jpg")
    with pytest.raises(InputError, match=r"image 0: .*no_such\.jpg does not exist"):
        answer(block_model, llava_tokenizer, image_processor, missing, "Is there a dog?")
    with pytest.raises(InputError, match=r"image 1: .*no_such\.jpg does not exist"):
        answer_batch(block_model, llava_tokenizer, image_processor, [circle, missing], ["A?", "B?"])
    not_an_image = tmp_path / "notes.png"
    not_an_image.write_text("not an image")
    with pytest.raises(InputError, match=r"image 0: cannot read image .*notes\.png"):
        answer(block_model, llava_tokenizer, image_processor, str(not_an_image), "Is there a dog?")
    with pytest.raises(InputError, match=r"question 1 is empty"):
        answer_batch(block_model, llava_tokenizer, image_processor, [circle, circle], ["Is there a dog?", "  "])
    with pytest.raises(InputError, match=r"2 images and 1 questions"):
        answer_batch(block_model, llava_tokenizer, image_processor, [circle, None], ["Is there a dog?"])
    with pytest.raises(InputError, match=r"unknown conversation mode 'chatml'"):
        answer(block_model, llava_tokenizer, image_processor, circle, "Is there a dog?", conv_mode="chatml")
    with pytest.raises(InputError, match=r"question 0 takes \d+ tokens .* context of 1024"):
        answer(block_model, llava_tokenizer, image_processor, circle, "Is there a dog? " * 400)
    with pytest.raises(InputError, match=r"image 0 is a int"):
        answer(block_model, llava_tokenizer, image_processor, 3, "Is there a dog?")
