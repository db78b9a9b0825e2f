"""POPE on MiniGPT-4: the evaluator's prefix-cached batches answer as plain `generate`, one question at a time."""

import numpy as np
import pytest
import torch
from PIL import Image

from eval.answering import PrefixCachedAnswerer
from post_decoder import VARIANTS
from post_decoder.families.minigpt4.image_processing import minigpt4_image_processor
from post_decoder.families.minigpt4.tiny import (
    make_tiny_minigpt4,
    tiny_minigpt4_tokenizer,
    train_tiny_minigpt4_tokenizer,
    with_block,
)

QUESTIONS = ["Is there a dog in the image?", "Is there a cup?", "Is there an apple in the image?", "Is there a cup?"]


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    directory = str(tmp_path_factory.mktemp("minigpt4_tokenizer"))
    train_tiny_minigpt4_tokenizer(directory)
    return tiny_minigpt4_tokenizer(directory)


@pytest.fixture(scope="module", params=[False, True], ids=["llama2", "vicuna0"])
def plain(request, tokenizer):
    return make_tiny_minigpt4(len(tokenizer) - 2, has_qformer=request.param)


def in_vocabulary(model, vocabulary):
    """Greedy answers that run their full length inside the tokenizer's vocabulary (no EOS, no padding rows)."""
    banned = torch.tensor([2, *range(vocabulary, model.config.text_config.vocab_size)])
    return model.lm_head.register_forward_hook(lambda module, inputs, output: output.index_fill(-1, banned, -1e9))


@pytest.mark.parametrize("variant", [None, *VARIANTS])
def test_pope_batches_answer_as_generate_one_by_one(plain, tokenizer, variant):
    model = plain if variant is None else with_block(plain, variant, perturb=0.3)
    image = Image.fromarray(np.random.default_rng(1).integers(0, 256, (40, 50, 3), dtype=np.uint8))
    answerer = PrefixCachedAnswerer(model, tokenizer, minigpt4_image_processor(32), max_new_tokens=6, batch_size=3)
    handle = in_vocabulary(model, len(tokenizer))
    try:
        answers = answerer.answer(image, QUESTIONS)
        one_by_one = []
        for question in QUESTIONS:
            input_ids = torch.tensor([answerer.prompt_ids(question, image)])
            with torch.no_grad():
                output = model.generate(
                    input_ids=input_ids, **answerer.image_inputs(image), max_new_tokens=6, do_sample=False
                )
            one_by_one.append(tokenizer.decode(output[0, input_ids.shape[1] :], skip_special_tokens=True).strip())
    finally:
        handle.remove()
    assert answers == one_by_one
    assert any(answers) and answers[1] == answers[3]  # (tiny models' greedy answers may decode to nothing)


def test_each_version_answers_in_its_own_template_unless_one_is_named(plain, tokenizer):
    """A Vicuna MiniGPT-4 (with a Q-Former) defaults to '###Human: ... ###Assistant: ', the Llama-2 version to
    '[INST] ... [/INST] ': POPE's answerer and `answer` both ask the family with the model's config."""
    from post_decoder.family import family_for
    from post_decoder.inference import answer

    family = family_for(plain)
    expected = "minigpt4_vicuna0" if plain.config.has_qformer else "minigpt4_llama2"
    assert family.default_conv_mode_for(plain.config) == expected
    processor = minigpt4_image_processor(32)
    answerer = PrefixCachedAnswerer(plain, tokenizer, processor, max_new_tokens=4)
    assert answerer.conv_mode == expected
    assert PrefixCachedAnswerer(plain, tokenizer, processor, conv_mode="minigpt4_llama2_chat").conv_mode == (
        "minigpt4_llama2_chat"
    )
    image = Image.fromarray(np.random.default_rng(2).integers(0, 256, (40, 50, 3), dtype=np.uint8))
    handle = in_vocabulary(plain, len(tokenizer))
    try:
        by_default = answer(plain, tokenizer, processor, image, QUESTIONS[0], max_new_tokens=4)
        named = answer(plain, tokenizer, processor, image, QUESTIONS[0], conv_mode=expected, max_new_tokens=4)
        other = "minigpt4_llama2" if plain.config.has_qformer else "minigpt4_vicuna0"
        in_other = answer(plain, tokenizer, processor, image, QUESTIONS[0], conv_mode=other, max_new_tokens=4)
    finally:
        handle.remove()
    assert by_default == named == answerer.answer(image, QUESTIONS[:1])[0]
    assert in_other != by_default  # the template mattered
