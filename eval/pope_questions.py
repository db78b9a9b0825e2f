"""The official POPE question files: one JSON object a line with `question_id`, `image`, `text`, `label`."""

import json
import os

from post_decoder.errors import InputError

POPE_SETS = ("random", "popular", "adversarial")
SET_ALIASES = {"adv": "adversarial"}
REQUIRED_KEYS = ("question_id", "image", "text", "label")


def pope_file(pope_path: str, set_name: str, dataset: str = "coco") -> str:
    """`coco_pope_{set}.json` under `pope_path` (the layout of RUCAIBox/POPE's `output/coco/`)."""
    set_name = SET_ALIASES.get(set_name, set_name)
    if set_name not in POPE_SETS:
        raise InputError(f"unknown POPE set {set_name!r}; choose one of random, popular, adv (adversarial)")
    return os.path.join(pope_path, f"{dataset}_pope_{set_name}.json")


def read_questions(path: str) -> list[dict]:
    """Every question of a POPE file; a malformed line is an error that names the file and line."""
    if not os.path.isfile(path):
        raise InputError(f"{path}: no such POPE question file (--pope_path is the folder of coco_pope_{{set}}.json)")
    questions, seen = [], set()
    with open(path, "rb") as handle:  # bytes, decoded line by line, so a bad byte is named by its line
        lines = handle.readlines()
    for number, raw in enumerate(lines, start=1):
        where = f"{path}:{number}"
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as error:
            raise InputError(
                f"{where}: not UTF-8 text ({error.reason} at byte {error.start}); is this a POPE file?"
            ) from None
        if not line.strip():
            continue
        try:
            question = json.loads(line)
        except json.JSONDecodeError as error:
            cut = number == len(lines) and not line.endswith("\n")
            hint = "; the file looks truncated: copy it again" if cut else ""
            raise InputError(f"{where}: not a JSON object ({error.msg}){hint}") from None
        _check_question(question, where)
        if question["question_id"] in seen:
            raise InputError(f"{where}: question_id {question['question_id']} appears twice")
        seen.add(question["question_id"])
        questions.append(question)
    if not questions:
        raise InputError(f"{path}: no questions")
    return questions


def _check_question(question, where: str):
    if not isinstance(question, dict):
        raise InputError(f"{where}: expected a JSON object, got {type(question).__name__}")
    missing = [key for key in REQUIRED_KEYS if key not in question]
    if missing:
        raise InputError(f"{where}: missing {', '.join(missing)}")
    question_id = question["question_id"]
    if isinstance(question_id, bool) or not isinstance(question_id, (int, str)):
        raise InputError(f"{where}: question_id must be a number or a string, got {question_id!r}")
    for key in ("image", "text"):
        if not isinstance(question[key], str) or not question[key]:
            raise InputError(f"{where}: {key} must be a non-empty string, got {question[key]!r}")
    if question["label"] not in ("yes", "no"):
        raise InputError(f"{where}: label must be 'yes' or 'no', got {question['label']!r}")
