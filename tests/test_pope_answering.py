import json

import numpy as np
import pytest
import torch
from PIL import Image

from eval.answering import PrefixCachedAnswerer
from post_decoder import VARIANTS
from post_decoder.families.llava.image_processing import load_image_processor
from post_decoder.families.llava.tiny import clip_preprocessor_config
from tests.helpers import eos_banned, with_block

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


class RecordedGenerate:
    """Wraps `model.generate` to keep each call's new tokens (the batch as generate returns it)."""

    def __init__(self, model):
        self.model, self.original, self.new_tokens = model, model.generate, []

    def __call__(self, *args, **kwargs):
        output = self.original(*args, **kwargs)
        self.new_tokens.append(output[:, kwargs["input_ids"].shape[1] :])
        return output

    def __enter__(self):
        self.model.generate = self
        return self

    def __exit__(self, *exc):
        del self.model.generate


def test_rows_stop_at_their_eos_and_the_batch_when_all_have(plain_llava, llava_tokenizer, processor):
    model = with_block(plain_llava, "post_interaction", perturb=0.3)
    image = Image.fromarray(np.random.default_rng(1).integers(0, 256, (40, 50, 3), dtype=np.uint8))
    questions = QUESTIONS[:4]
    answerer = PrefixCachedAnswerer(model, llava_tokenizer, processor, max_new_tokens=8, batch_size=4)
    eos = model.generation_config.eos_token_id
    with eos_banned(model):  # the tiny model's own EOS never comes; a token it does emit plays </s>
        with RecordedGenerate(model) as recorded:
            answerer.answer(image, questions)
        free_rows = recorded.new_tokens[0].tolist()
        assert all(len(row) == 8 for row in free_rows)

        def stop_at(token):
            model.generation_config.eos_token_id = [eos, token]
            try:
                with RecordedGenerate(model) as recorded:
                    answers = answerer.answer(image, questions)
                return answers, recorded.new_tokens[0], one_question_at_a_time(answerer, image, questions)
            finally:
                model.generation_config.eos_token_id = eos

        # A token only some rows emit: those rows end there, the others run to max_new_tokens.
        token = next(token for row in free_rows for token in row[1:] if any(token not in other for other in free_rows))
        answers, new_tokens, one_by_one = stop_at(token)
        cut = [row[: row.index(token) + 1] if token in row else row for row in free_rows]
        assert answers == one_by_one == [llava_tokenizer.decode(ids, skip_special_tokens=True).strip() for ids in cut]
        assert new_tokens.shape[1] == 8 and min(map(len, cut)) < 8
        # A token every row emits early: the whole batch stops after it, far before max_new_tokens.
        token = next(token for token in free_rows[0][1:] if all(token in row[1:4] for row in free_rows))
        answers, new_tokens, one_by_one = stop_at(token)
        assert (
            answers == one_by_one and 2 <= new_tokens.shape[1] == max(row.index(token) + 1 for row in free_rows) <= 4
        )


def test_the_conversation_mode_reaches_the_prompt(plain_llava, llava_tokenizer, processor):
    from post_decoder.errors import InputError
    from post_decoder.families.llava.conversation import question_prompt, tokenize_with_image

    config = plain_llava.config
    ids = {}
    for mode in ("vicuna_v1", "llava_v1"):
        answerer = PrefixCachedAnswerer(plain_llava, llava_tokenizer, processor, prompt_suffix=" Yes?", conv_mode=mode)
        ids[mode] = answerer.prompt_ids("Is there a cup?")
        prompt = question_prompt("Is there a cup?", suffix=" Yes?", conv_mode=mode)
        assert ids[mode] == tokenize_with_image(
            prompt, llava_tokenizer, config.image_token_id, config.image_seq_length
        )
    assert ids["vicuna_v1"] != ids["llava_v1"]
    assert "curious human" in llava_tokenizer.decode(ids["llava_v1"]) and "human" not in llava_tokenizer.decode(
        ids["vicuna_v1"]
    )
    assert PrefixCachedAnswerer(plain_llava, llava_tokenizer, processor).max_new_tokens == 128  # LLaVA's default
    with pytest.raises(InputError, match="unknown conversation mode 'llava_v2'"):
        PrefixCachedAnswerer(plain_llava, llava_tokenizer, processor, conv_mode="llava_v2")
    with pytest.raises(InputError, match="batch_size must be a whole number of at least 1, got 0"):
        PrefixCachedAnswerer(plain_llava, llava_tokenizer, processor, batch_size=0)
