"""Answers as JSON lines, written as they come, so an interrupted run resumes where it stopped.

Each rank appends to its own part file `{answers}.part{rank}`; at the end rank 0 merges the parts
(and any earlier answers) into `{answers}`, written whole and then renamed.
One line: {"set", "question_id", "image", "prompt", "answer", "model_id"}.
"""

import glob
import json
import os

from eval.pope_questions import POPE_SETS


def part_path(answers_file: str, rank: int) -> str:
    return f"{answers_file}.part{rank}"


def existing_paths(answers_file: str) -> list[str]:
    return [path for path in [answers_file, *sorted(glob.glob(f"{glob.escape(answers_file)}.part*"))] if os.path.isfile(path)]


def read_answers(paths: list[str]) -> dict[tuple[str, int], dict]:
    """(set, question_id) -> record. A torn last line (a crash mid-write) is dropped; any other
    malformed line is an error naming its file and line."""
    records = {}
    for path in paths:
        with open(path) as handle:
            lines = handle.readlines()
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                if number == len(lines) and not line.endswith("\n"):
                    continue  # the line being written when the run stopped; it is answered again
                raise ValueError(f"{path}:{number}: not a JSON object") from None
            if "question_id" not in record or "answer" not in record:
                raise ValueError(f"{path}:{number}: an answer needs question_id and answer")
            records[(record.get("set", ""), record["question_id"])] = record
    return records


class AnswerWriter:
    """Appends records to one part file, flushed line by line."""

    def __init__(self, path: str):
        self.path = path
        self.handle = open(path, "a")

    def write(self, record: dict):
        self.handle.write(json.dumps(record) + "\n")
        self.handle.flush()

    def close(self):
        self.handle.close()


def merge_answers(answers_file: str) -> dict[tuple[str, int], dict]:
    """Merge the parts and earlier answers into `answers_file` (sorted by set, then question_id),
    then remove the parts."""
    paths = existing_paths(answers_file)
    records = read_answers(paths)
    order = {name: index for index, name in enumerate(POPE_SETS)}
    ordered = sorted(records.values(), key=lambda record: (order.get(record.get("set"), 99), record["question_id"]))
    temporary = answers_file + ".tmp"
    with open(temporary, "w") as handle:
        handle.writelines(json.dumps(record) + "\n" for record in ordered)
    os.replace(temporary, answers_file)
    for path in paths:
        if path != answers_file:
            os.remove(path)
    return records
