"""`--score-only` on answer files written by other tools, on the official POPE question files.

The expected counts were obtained by running RUCAIBox/POPE's own `evaluate.py` (its `ans_file` and
`label_file` set to the HA-DPO-format file below and the official question file) beside ours.
"""

import json
import random

import pytest

from eval import pope_eval_post
from post_decoder.errors import InputError, run_command
from tests.helpers import shared_file

ANSWERS = [
    "No, there is not.", "Yes.", "There is no dog", "not sure", "", "Yes, there is a dog.", "no",
    "No", "Yes", "I think so. No wait", "There is a cat, not a dog.", "NO.", "Nope", "yes, no",
    "The answer is: no.", "no.", " no", "Not", "unknown", "1. No", "No</s>", "Yes</s>",
    "Yes, there is a dog in the image.</s>",
]  # fmt: skip
# POPE's evaluate.py on these answers: TP, FP, TN, FN per set.
OFFICIAL_COUNTS = {
    "random": (849, 864, 636, 651),
    "popular": (849, 840, 660, 651),
    "adversarial": (849, 866, 634, 651),
}
SET_FLAGS = {"random": "random", "popular": "popular", "adversarial": "adv"}


def official_questions(set_name):
    with open(shared_file("pope", f"coco_pope_{set_name}.json")) as handle:
        return [json.loads(line) for line in handle]


def answer_of(index, question):
    return ANSWERS[(index + len(question["text"])) % len(ANSWERS)]


def write_llava_answers(path, set_name, shuffle=False):
    """The lines LLaVA's llava/eval/model_vqa_loader.py writes (its json.dumps keys, in its order)."""
    lines = []
    for index, question in enumerate(official_questions(set_name)):
        record = {
            "question_id": question["question_id"],
            "prompt": question["text"],
            "text": answer_of(index, question),
        }
        record.update(answer_id=f"fakeuuid{index:014d}", model_id="llava-v1.5-7b", metadata={})
        lines.append(json.dumps(record) + "\n")
    if shuffle:  # we match by question_id, not by line order
        random.Random(0).shuffle(lines)
    path.write_text("".join(lines))
    return path


def write_hadpo_answers(path, set_name):
    """The lines HA-DPO's ha_dpo/models/llava-v1_5/pope_eval.py writes: question, answer, question_id."""
    lines = []
    for index, question in enumerate(official_questions(set_name)):
        record = {
            "question": question["text"],
            "answer": answer_of(index, question),
            "question_id": question["question_id"],
        }
        lines.append(json.dumps(record) + "\n")
    path.write_text("".join(lines))
    return path


def score_only(tmp_path, set_choice, *answer_specs):
    argv = [
        "--score-only",
        "--pope_path",
        shared_file("pope"),
        "--set",
        set_choice,
        "--metrics-file",
        str(tmp_path / "m.json"),
    ]
    for spec in answer_specs:
        argv += ["--answers-file", str(spec)]
    return pope_eval_post.main(argv)


def counts(metrics):
    return tuple(metrics[key] for key in ("tp", "fp", "tn", "fn"))


@pytest.mark.parametrize("set_name", ["random", "popular", "adversarial"])
def test_one_set_of_llava_answers_scores_as_the_official_script(tmp_path, set_name):
    answers = write_llava_answers(tmp_path / "llava.jsonl", set_name, shuffle=True)
    metrics = score_only(tmp_path, SET_FLAGS[set_name], answers)
    assert list(metrics) == [set_name] and counts(metrics[set_name]) == OFFICIAL_COUNTS[set_name]
    assert json.loads((tmp_path / "m.json").read_text()) == metrics


def test_all_sets_from_one_file_per_set_in_both_formats(tmp_path, capsys):
    random_file = write_llava_answers(tmp_path / "llava_random.jsonl", "random")
    popular_file = write_hadpo_answers(tmp_path / "pope_popular.jsonl", "popular")
    adversarial_file = write_hadpo_answers(tmp_path / "pope_adv.jsonl", "adversarial")
    metrics = score_only(
        tmp_path, "all", f"random={random_file}", f"popular={popular_file}", f"adv={adversarial_file}"
    )
    assert {name: counts(values) for name, values in metrics.items()} == OFFICIAL_COUNTS
    f1 = {name: values["f1"] for name, values in metrics.items()}
    assert f1["random"] == pytest.approx(2 * 849 / (2 * 849 + 864 + 651))
    assert f"mean F1 over 3 sets: {100 * sum(f1.values()) / 3:.2f}" in capsys.readouterr().out


def test_a_file_that_does_not_name_its_set_needs_one_with_set_all(tmp_path, capsys):
    answers = write_llava_answers(tmp_path / "llava.jsonl", "random")
    with pytest.raises(SystemExit) as exit_info:
        run_command(
            pope_eval_post.main,
            ["--score-only", "--answers-file", str(answers), "--pope_path", shared_file("pope")],
            "pope_eval_post.py",
        )
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and error.startswith(
        f"pope_eval_post.py: error: {answers}:1: this answer does not name its POPE set"
    )
    assert "--answers-file random=FILE" in error


def test_answers_to_other_questions_under_the_same_ids_are_refused(tmp_path):
    # Answers to another question file (here: the popular set's) under the same ids: the texts tell.
    answers = write_llava_answers(tmp_path / "llava.jsonl", "popular")
    expected = r"llava.jsonl:2: question_id 2 answers 'Is there a dining table in the image\?', but question 2 of "
    with pytest.raises(InputError, match=expected + r".*coco_pope_random.json is 'Is there a car in the image\?'"):
        score_only(tmp_path, "random", answers)


def test_a_question_file_given_as_answers_is_named(tmp_path):
    with pytest.raises(InputError, match=r"coco_pope_random.json:1: this looks like a POPE question file"):
        score_only(tmp_path, "random", shared_file("pope", "coco_pope_random.json"))


def test_an_answer_file_with_answers_missing_says_how_many(tmp_path):
    answers = write_llava_answers(tmp_path / "llava.jsonl", "random")
    answers.write_text("".join(answers.read_text().splitlines(keepends=True)[:2990]))
    with pytest.raises(InputError, match=r"10 of 3000 questions have no answer: question_id 2991, 2992"):
        score_only(tmp_path, "random", answers)
