"""POPE answering and the single-question API on tiny Qwen-VL models (fp32, CPU): prefix-cached, batched answers
equal per-question `generate`, and transformers' own Qwen-VL `generate` for the plain model."""

import json

import pytest
import torch

from eval.answer_provenance import read_settings
from eval.answering import PrefixCachedAnswerer
from eval.pope_eval_post import main as pope_main
from post_decoder.builder import load_pretrained_model
from post_decoder.errors import InputError
from post_decoder.family import family_for
from post_decoder.inference import answer, answer_batch
from post_decoder.saving import save_model_folder
from tests.helpers import eos_banned
from tests.helpers.qwen_vl import VERSIONS, TinyQwen, ours, picture

QUESTIONS = [
    "Is there a dog in the image?",
    "Is there a traffic light in the image?",
    "Is there an apple in the image?",
    "Is there a cup?",
    "Is there a dog in the image?",
]


@pytest.fixture(scope="module", params=VERSIONS)
def tiny(request, tmp_path_factory):
    return TinyQwen(request.param, tmp_path_factory.mktemp("qwen"))


def one_question_at_a_time(model, answerer, image, questions, tokenizer):
    """Plain generate, batch size 1, the whole prompt each time, the model's own positions."""
    answers = []
    for question in questions:
        image_inputs = answerer.image_inputs(image)
        counts = family_for(model).image_token_counts(model.config, image_inputs)
        input_ids = torch.tensor([answerer.prompt_ids(question, image_tokens=counts)])
        extra = {}
        if not hasattr(model, "post_decoder"):
            extra["mm_token_type_ids"] = (input_ids == model.config.image_token_id).int()  # transformers' own way
        with torch.no_grad():
            output = model.generate(
                input_ids=input_ids,
                **image_inputs,
                **extra,
                max_new_tokens=answerer.max_new_tokens,
                do_sample=False,
                pad_token_id=tokenizer.pad_token_id,
            )
        answers.append(tokenizer.decode(output[0, input_ids.shape[1] :], skip_special_tokens=True).strip())
    return answers


@pytest.mark.parametrize("variant", [None, "post_interaction", "transformer_block"])
def test_prefix_cached_batches_answer_as_plain_generate_one_by_one(tiny, variant):
    model = ours(tiny.plain, variant, perturb=0.3)
    image = picture(40, 24, seed=5)
    answerer = PrefixCachedAnswerer(model, tiny.tokenizer, tiny.processor, max_new_tokens=6, batch_size=3)
    with eos_banned(model):
        answers = answerer.answer(image, QUESTIONS)
        assert answers == one_question_at_a_time(model, answerer, image, QUESTIONS, tiny.tokenizer)
        if variant is None:  # transformers' own Qwen-VL class and generate, with its stored rope_deltas
            with eos_banned(tiny.plain):
                assert answers == one_question_at_a_time(tiny.plain, answerer, image, QUESTIONS, tiny.tokenizer)
    assert all(answers) and answers[0] == answers[4]
    assert answerer.conv_mode == family_for(model).default_conv_mode


def test_answer_batch_equals_answer_one_by_one_with_images_of_different_sizes(tiny):
    model = ours(tiny.plain, "post_interaction", perturb=0.3)
    images = [picture(40, 24, seed=1), None, picture(24, 48, seed=2), picture(200, 120, seed=3)]
    questions = ["Is there a dog in the image?", "What color is a banana?", "Cat?", "Describe the image."]
    counts = [None if image is None else family_for(model).image_token_count(model.config, image, tiny.processor)
              for image in images]  # fmt: skip
    assert len(set(counts) - {None}) == 3  # three sizes, three token counts
    with eos_banned(model):
        one_by_one = [
            answer(model, tiny.tokenizer, tiny.processor, image, question, max_new_tokens=5)
            for image, question in zip(images, questions)
        ]
        batched = answer_batch(
            model, tiny.tokenizer, tiny.processor, images, questions, batch_size=3, max_new_tokens=5
        )
        answerer = PrefixCachedAnswerer(model, tiny.tokenizer, tiny.processor, max_new_tokens=5)
        for index in (0, 2, 3):
            assert [one_by_one[index]] == answerer.answer(images[index], [questions[index]])
    assert batched == one_by_one
    assert len(set(one_by_one)) > 1


def test_pope_command_answers_a_qwen_folder(tiny, pope_workspace, tmp_path):
    model = ours(tiny.plain, "post_interaction", perturb=0.3)
    folder = tmp_path / "model"
    save_model_folder(model, tiny.tokenizer, tiny.processor, str(folder))
    answers_file = tmp_path / "answers.jsonl"
    args = ["--model-path", str(folder), "--pope_path", str(pope_workspace / "pope"), "--coco_path",
            str(pope_workspace / "images"), "--answers-file", str(answers_file), "--max-new-tokens", "3",
            "--batch-size", "3", "--max_pixels", str(32 * 32)]  # fmt: skip
    metrics = pope_main(args)
    assert set(metrics) == {"random", "popular", "adversarial"}
    lines = [json.loads(line) for line in answers_file.read_text().splitlines()]
    assert len(lines) == 3 * 8
    # The command's answers are the answerer's (its template and the --max_pixels processor) on the same image.
    tokenizer, loaded, processor, _ = load_pretrained_model(str(folder), max_pixels=32 * 32)
    assert processor.size["longest_edge"] == 32 * 32
    from post_decoder.images import open_image

    first = lines[0]
    answerer = PrefixCachedAnswerer(loaded, tokenizer, processor, max_new_tokens=3)
    image = open_image(str(pope_workspace / "images" / first["image"]))
    assert answerer.answer(image, [first["prompt"]]) == [first["answer"]]
    recorded = read_settings(str(answers_file))
    assert recorded["conv_mode"] == family_for(loaded).default_conv_mode
    assert (recorded["min_pixels"], recorded["max_pixels"]) == (None, 32 * 32)
    # Answers made with other pixel bounds are other answers: --resume refuses them, touching nothing.
    before = answers_file.read_text()
    with pytest.raises(InputError, match="max_pixels 1024 there, 2048 now"):
        pope_main([*args[:-1], str(64 * 32), "--resume"])
    assert answers_file.read_text() == before
