import json
import random

import pytest

from eval.pope_questions import pope_file, read_questions
from eval.pope_scoring import parse_yes_no, score_answers
from tests.helpers import shared_file

AWKWARD_ANSWERS = [
    "No, there is not.",
    "Yes.",
    "There is no dog",
    "not sure",
    "",
    "Yes, there is a dog.",
    "no",
    "No",
    "Yes",
    "I think so. No wait",
    "There is a cat, not a dog.",
    "NO.",
    "Nope",
    "yes, no",
    "The answer is: no.",
    "no.",
    " no",
    "Not",
    "unknown",
    "1. No",
]


def official_evaluate(question_lines: list[str], answer_texts: list[str]) -> dict:
    """The official POPE evaluate.py, restated: answers in the questions' line order."""
    labels = [0 if json.loads(line)["label"] == "no" else 1 for line in question_lines]
    predictions = []
    for text in answer_texts:
        if text.find(".") != -1:
            text = text.split(".")[0]
        words = text.replace(",", "").split(" ")
        predictions.append(0 if ("No" in words or "not" in words or "no" in words) else 1)
    tp = sum(pred == 1 and label == 1 for pred, label in zip(predictions, labels))
    fp = sum(pred == 1 and label == 0 for pred, label in zip(predictions, labels))
    tn = sum(pred == 0 and label == 0 for pred, label in zip(predictions, labels))
    fn = sum(pred == 0 and label == 1 for pred, label in zip(predictions, labels))
    precision = tp / (tp + fp)
    recall = tp / (tp + fn)
    return {
        "accuracy": (tp + tn) / (tp + tn + fp + fn),
        "precision": precision,
        "recall": recall,
        "f1": 2 * precision * recall / (precision + recall),
        "yes_ratio": predictions.count(1) / len(predictions),
        "tp": tp,
        "fp": fp,
        "tn": tn,
        "fn": fn,
    }


@pytest.mark.parametrize("set_name", ["random", "popular", "adv"])
def test_scoring_equals_the_official_script_on_the_real_question_files(set_name):
    path = pope_file(shared_file("pope"), set_name)
    with open(path) as handle:
        lines = [line for line in handle if line.strip()]
    rng = random.Random(set_name)
    texts = [rng.choice(AWKWARD_ANSWERS) for _ in lines]
    questions = read_questions(path)
    assert len(questions) == 3000
    answers = {question["question_id"]: text for question, text in zip(questions, texts)}
    shuffled = dict(sorted(answers.items(), key=lambda item: rng.random()))  # order must not matter
    ours = score_answers(questions, shuffled).as_dict()
    expected = official_evaluate(lines, texts)
    assert ours == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize(
    "answer, parsed",
    [
        ("No, there is not.", "no"),
        ("Yes.", "yes"),
        ("There is no dog", "no"),
        ("not sure", "no"),
        ("", "yes"),
        ("NO.", "yes"),
        ("Yes. There is no cat.", "yes"),
        ("no.", "no"),
        ("Not", "yes"),
    ],
)
def test_awkward_answers_parse_as_the_official_script_does(answer, parsed):
    assert parse_yes_no(answer) == parsed


def test_a_question_without_an_answer_is_an_error():
    questions = [{"question_id": 1, "label": "yes"}, {"question_id": 2, "label": "no"}]
    with pytest.raises(ValueError, match="1 of 2 questions have no answer: question_id 2"):
        score_answers(questions, {1: "Yes"})


def test_all_no_answers_give_zero_precision_not_a_crash():
    questions = [{"question_id": 1, "label": "yes"}, {"question_id": 2, "label": "no"}]
    metrics = score_answers(questions, {1: "No", 2: "No"})
    assert (metrics.precision, metrics.recall, metrics.f1, metrics.accuracy, metrics.yes_ratio) == (0, 0, 0, 0.5, 0)


@pytest.mark.parametrize(
    "line, message",
    [
        ("{not json", r"questions.json:2: not a JSON object"),
        ('{"question_id": 9, "image": "a.jpg", "text": "Is there a cat?"}', r"questions.json:2: missing label"),
        (
            '{"question_id": 9, "image": "a.jpg", "text": "Is there?", "label": "maybe"}',
            r"questions.json:2: label must be",
        ),
        (
            '{"question_id": 1, "image": "a.jpg", "text": "Is there?", "label": "no"}',
            r"questions.json:2: question_id 1 appears twice",
        ),
        ("[1, 2]", r"questions.json:2: expected a JSON object, got list"),
    ],
)
def test_a_malformed_question_line_names_its_line(tmp_path, line, message):
    path = tmp_path / "questions.json"
    path.write_text('{"question_id": 1, "image": "a.jpg", "text": "Is there a dog?", "label": "yes"}\n' + line + "\n")
    with pytest.raises(ValueError, match=message):
        read_questions(str(path))


def test_set_names_follow_the_cli():
    assert pope_file("p", "adv").endswith("coco_pope_adversarial.json")
    with pytest.raises(ValueError, match="unknown POPE set 'hard'"):
        pope_file("p", "hard")
