import json

import numpy as np
import pytest
import torch
from PIL import Image

from eval.answering import PrefixCachedAnswerer
from post_decoder import VARIANTS
from post_decoder.image_processing import load_image_processor
from post_decoder.tiny import clip_preprocessor_config
from tests.conftest import eos_banned, with_block

QUESTIONS = [
    "Is there a dog in the image?",
    "Is there a traffic light in the image?",
    "Is there an apple in the image?",
    "Is there a cup?",
    "Is there a dog in the image?",
]


@pytest.fixture(scope="module")
def processor(tmp_path_factory):
    folder = tmp_path_factory.mktemp("processor")
    (folder / "preprocessor_config.json").write_text(json.dumps(clip_preprocessor_config(32)))
    return load_image_processor(str(folder))


def one_question_at_a_time(answerer, image, questions):
    """The HA-DPO / LLaVA scripts' way: plain generate, batch size 1, the whole prompt each time."""
    model, tokenizer = answerer.model, answerer.tokenizer
    answers = []
    for question in questions:
        input_ids = torch.tensor([answerer.prompt_ids(question)])
        with torch.no_grad():
            output = model.generate(
                input_ids=input_ids,
                pixel_values=answerer.pixel_values(image),
                max_new_tokens=answerer.max_new_tokens,
                do_sample=False,
                pad_token_id=tokenizer.pad_token_id,
            )
        answers.append(tokenizer.decode(output[0, input_ids.shape[1] :], skip_special_tokens=True).strip())
    return answers


@pytest.mark.parametrize("variant", [None, *VARIANTS])
def test_prefix_cached_batches_answer_as_plain_generate_one_by_one(plain_llava, llava_tokenizer, processor, variant):
    model = plain_llava if variant is None else with_block(plain_llava, variant, perturb=0.3)
    image = Image.fromarray(np.random.default_rng(1).integers(0, 256, (40, 50, 3), dtype=np.uint8))
    answerer = PrefixCachedAnswerer(model, llava_tokenizer, processor, max_new_tokens=8, batch_size=3)
    with eos_banned(model):
        answers = answerer.answer(image, QUESTIONS)
        assert answers == one_question_at_a_time(answerer, image, QUESTIONS)
    assert all(answers) and answers[0] == answers[4]
