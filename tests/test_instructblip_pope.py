"""The POPE command and `answer`/`answer_batch` on an InstructBLIP folder: its Q-Former reads each question, so no
prompt prefix is shared (`prompt_prefix_is_shared = False`); every answer equals `generate` on its question alone."""

import json

import pytest
import torch

from eval.answer_provenance import read_settings
from eval.pope_eval_post import main as pope_main
from post_decoder.builder import load_pretrained_model
from post_decoder.families.instructblip import INSTRUCTBLIP
from post_decoder.families.instructblip.tiny import make_tiny_hub_folder, question_batch
from post_decoder.images import open_image
from post_decoder.inference import answer, answer_batch
from post_decoder.saving import save_model_folder


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """A tiny InstructBLIP with a block moved off its identity, saved merged."""
    root = tmp_path_factory.mktemp("instructblip_pope")
    hub = make_tiny_hub_folder(str(root / "hub"))
    tokenizer, model, processor, _ = load_pretrained_model(
        hub, device="cpu", dtype=torch.float32, post_decoder="post_interaction"
    )
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for parameter in model.post_decoder.parameters():
            parameter.add_(0.3 * torch.randn(parameter.shape, generator=generator))
    save_model_folder(model, tokenizer, processor, str(root / "merged"))
    return str(root / "merged")


def alone(model, processor, image, question: str, max_new_tokens: int) -> str:
    """`generate` on one question (its own Q-Former tokens, its own image pass)."""
    batch = question_batch(model, processor, [image], [question])
    with torch.no_grad():
        output = model.generate(
            **batch, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=processor.tokenizer.pad_token_id
        )
    return processor.tokenizer.decode(output[0, batch["input_ids"].shape[1] :], skip_special_tokens=True).strip()


def test_pope_command_answers_an_instructblip_folder_as_generate_one_question_at_a_time(
    folder, pope_workspace, tmp_path
):
    answers_file = tmp_path / "answers.jsonl"
    args = ["--model-path", folder, "--pope_path", str(pope_workspace / "pope"), "--coco_path",
            str(pope_workspace / "images"), "--answers-file", str(answers_file), "--max-new-tokens", "4",
            "--batch-size", "3"]  # fmt: skip
    metrics = pope_main(args)
    assert set(metrics) == {"random", "popular", "adversarial"}
    lines = [json.loads(line) for line in answers_file.read_text().splitlines()]
    assert len(lines) == 3 * 8
    assert read_settings(str(answers_file))["conv_mode"] == INSTRUCTBLIP.default_conv_mode == "instructblip"
    _, model, processor, _ = load_pretrained_model(folder, device="cpu", dtype=torch.float32)
    for line in lines[:6]:  # two images' questions, batched 3 at a time by the command
        image = open_image(str(pope_workspace / "images" / line["image"]))
        assert line["answer"] == alone(model, processor, image, line["prompt"], 4)
    assert any(line["answer"] for line in lines)


def test_answer_and_answer_batch_give_the_qformer_each_question(folder, pope_workspace):
    tokenizer, model, processor, _ = load_pretrained_model(folder, device="cpu", dtype=torch.float32)
    images = sorted((pope_workspace / "images").iterdir())[:2]
    pictures = [open_image(str(path)) for path in images]
    questions = ["Is there a dog in the image?", "Is there a cat in the image?", "Describe this image in detail."]
    rows = [(pictures[0], questions[0]), (None, questions[1]), (pictures[1], questions[2])]
    batched = answer_batch(
        model, tokenizer, processor, [path for path in (images[0], None, images[1])], questions, max_new_tokens=4
    )
    for (image, question), got in zip(rows, batched):
        if image is None:
            continue
        assert got == alone(model, processor, image, question, 4)
        assert answer(model, tokenizer, processor, image, question, max_new_tokens=4) == got
