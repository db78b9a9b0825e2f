"""The official POPE question files: one JSON object a line with `question_id`, `image`, `text`, `label`."""

import json
import os

POPE_SETS = ("random", "popular", "adversarial")
SET_ALIASES = {"adv": "adversarial"}
REQUIRED_KEYS = ("question_id", "image", "text", "label")


def pope_file(pope_path: str, set_name: str, dataset: str = "coco") -> str:
    """`coco_pope_{set}.json` under `pope_path` (the layout of RUCAIBox/POPE's `output/coco/`)."""
    set_name = SET_ALIASES.get(set_name, set_name)
    if set_name not in POPE_SETS:
        raise ValueError(f"unknown POPE set {set_name!r}; choose one of random, popular, adv (adversarial)")
    return os.path.join(pope_path, f"{dataset}_pope_{set_name}.json")


def read_questions(path: str) -> list[dict]:
    """Every question of a POPE file; a malformed line is an error that names the file and line."""
    questions, seen = [], set()
    with open(path) as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                question = json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(f"{path}:{number}: not a JSON object ({error.msg})") from None
            if not isinstance(question, dict):
                raise ValueError(f"{path}:{number}: expected a JSON object, got {type(question).__name__}")
            missing = [key for key in REQUIRED_KEYS if key not in question]
            if missing:
                raise ValueError(f"{path}:{number}: missing {', '.join(missing)}")
            if question["label"] not in ("yes", "no"):
                raise ValueError(f"{path}:{number}: label must be 'yes' or 'no', got {question['label']!r}")
            if question["question_id"] in seen:
                raise ValueError(f"{path}:{number}: question_id {question['question_id']} appears twice")
            seen.add(question["question_id"])
            questions.append(question)
    if not questions:
        raise ValueError(f"{path}: no questions")
    return questions
