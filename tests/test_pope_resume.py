"""`--resume` continues only the answers of the same model and settings; an empty part file is no run."""

import copy
import json
import os
import shutil

import pytest

from eval import pope_eval_post
from eval.answer_provenance import AnswerSettings, weights_fingerprint
from post_decoder.errors import InputError
from tests.helpers import add_noise, with_block
from tests.helpers.pope_workspace import cli_args, read_lines, save_model


@pytest.fixture(scope="module")
def complete(pope_workspace, tmp_path_factory):
    """A whole run's answers file (and its settings), to cut into interrupted ones."""
    answers = tmp_path_factory.mktemp("complete") / "answers.jsonl"
    pope_eval_post.main(cli_args(pope_workspace, answers))
    return answers


def interrupted_copy(complete, folder, kept=8):
    """The state a run of the same settings leaves when stopped after `kept` answers."""
    answers = folder / "answers.jsonl"
    lines = complete.read_text().splitlines(keepends=True)
    (folder / "answers.jsonl.part0").write_text("".join(lines[:kept]))
    shutil.copy(f"{complete}.settings.json", f"{answers}.settings.json")
    return answers


def test_the_settings_file_says_what_wrote_the_answers(pope_workspace, complete):
    recorded = json.loads(open(f"{complete}.settings.json").read())
    assert recorded["conv_mode"] == "vicuna_v1" and recorded["prompt_suffix"] == "" and recorded["max_new_tokens"] == 4
    assert recorded["dtype"] == "float32" and recorded["decoding"] == "greedy"
    assert recorded["model_path"] == str(pope_workspace / "model") and len(recorded["weights"]) == 16


@pytest.mark.parametrize(
    "change, message",
    [
        (["--conv-mode", "llava_v1"], "conv_mode 'vicuna_v1' there, 'llava_v1' now"),
        (
            ["--prompt-suffix", "\nAnswer the question using a single word or phrase."],
            "prompt_suffix '' there, '\\nAnswer",
        ),
        (["--max-new-tokens", "5"], "max_new_tokens 4 there, 5 now"),
    ],
)
def test_resume_with_other_prompt_settings_is_refused(pope_workspace, complete, tmp_path, change, message):
    answers = interrupted_copy(complete, tmp_path)
    before = answers.with_name("answers.jsonl.part0").read_text()
    with pytest.raises(InputError, match="answers.jsonl holds answers written with other settings") as error:
        pope_eval_post.main(cli_args(pope_workspace, answers, "--resume") + change)
    assert message in str(error.value) and "\n" not in str(error.value)
    assert answers.with_name("answers.jsonl.part0").read_text() == before  # nothing touched


def test_resume_with_another_model_is_refused(plain_llava, llava_tokenizer, pope_workspace, complete, tmp_path):
    other = save_model(plain_llava, llava_tokenizer, tmp_path, "other_model", seed=1)
    answers = interrupted_copy(complete, tmp_path)
    args = cli_args(pope_workspace, answers, "--resume")
    args[args.index("--model-path") + 1] = str(other)
    with pytest.raises(
        InputError,
        match=r"weights '[0-9a-f]{16}' there, '[0-9a-f]{16}' now; model '.*model' there, '.*other_model' now",
    ):
        pope_eval_post.main(args)


def test_resume_with_the_same_weights_moved_continues(pope_workspace, complete, tmp_path):
    moved = tmp_path / "moved_model"
    shutil.copytree(pope_workspace / "model", moved)
    answers = interrupted_copy(complete, tmp_path)
    args = cli_args(pope_workspace, answers, "--resume", "--batch-size", "2")  # the batch size does not change answers
    args[args.index("--model-path") + 1] = str(moved)
    pope_eval_post.main(args)
    answered = {(line["set"], line["question_id"]): line["answer"] for line in read_lines(answers)}
    assert answered == {(line["set"], line["question_id"]): line["answer"] for line in read_lines(complete)}
    assert {line["model_id"] for line in read_lines(answers)[8:]} == {str(moved)}


def test_answers_without_a_settings_record_are_not_resumed(pope_workspace, complete, tmp_path):
    answers = interrupted_copy(complete, tmp_path)
    os.remove(f"{answers}.settings.json")
    with pytest.raises(InputError, match=r"answers.jsonl: there is no record of what wrote these answers"):
        pope_eval_post.main(cli_args(pope_workspace, answers, "--resume"))


@pytest.mark.parametrize("problem", ["missing", "corrupt"])  # found before loading the model / while answering
def test_a_run_stopped_on_its_first_question_leaves_no_part_and_reruns(pope_workspace, tmp_path, problem):
    images = tmp_path / "images"
    shutil.copytree(pope_workspace / "images", images)
    first = images / "img0.png"  # the first image asked about
    if problem == "missing":
        os.remove(first)
    else:
        first.write_bytes(b"not a png")
    answers = tmp_path / "answers.jsonl"
    args = cli_args(pope_workspace, answers)
    args[args.index("--coco_path") + 1] = str(images)
    with pytest.raises(InputError, match="img0.png (is missing|cannot be read)"):
        pope_eval_post.main(args)
    assert not [name for name in os.listdir(tmp_path) if ".part" in name or name == "answers.jsonl"]
    shutil.copy(pope_workspace / "images" / "img0.png", first)
    assert len(pope_eval_post.main(args)) == 3  # no "exists: pass --resume"


def test_an_empty_part_file_left_by_an_old_run_counts_as_absent(pope_workspace, tmp_path):
    answers = tmp_path / "answers.jsonl"
    (tmp_path / "answers.jsonl.part0").write_text("")
    (tmp_path / "answers.jsonl.part1").write_text("")
    pope_eval_post.main(cli_args(pope_workspace, answers))
    assert len(read_lines(answers)) == 24 and sorted(os.listdir(tmp_path)) == [
        "answers.jsonl", "answers.jsonl.settings.json", "answers_metrics.json", "answers_metrics.png"
    ]  # fmt: skip


def test_the_weights_fingerprint_follows_the_values_not_the_object(plain_llava):
    model = with_block(plain_llava, "post_interaction", perturb=0.3)
    assert weights_fingerprint(model) == weights_fingerprint(copy.deepcopy(model))
    trained = copy.deepcopy(model)
    add_noise(trained.post_decoder, 1e-4)  # a small step of training moves every value of the block
    assert weights_fingerprint(trained) != weights_fingerprint(model)


def test_pixel_bounds_are_settings_and_records_from_before_them_mean_none():
    settings = AnswerSettings(weights="w", dtype="float32", conv_mode="vicuna_v1", prompt_suffix="", max_new_tokens=4)
    older = {"weights": "w", "dtype": "float32", "conv_mode": "vicuna_v1", "prompt_suffix": "", "max_new_tokens": 4}
    older["decoding"] = "greedy"
    assert settings.differences(older) == []
    bounded = AnswerSettings(**{**older, "max_pixels": 4096})
    assert bounded.differences(older) == ["max_pixels None there, 4096 now"]
