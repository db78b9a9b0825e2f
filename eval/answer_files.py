"""Answers as JSON lines, written as they come, so an interrupted run resumes where it stopped.

Each rank appends to its own part file `{answers}.part{rank}`; at the end rank 0 merges the parts
(and any earlier answers) into `{answers}`, written whole and then renamed. An empty file is no
run: it is treated as absent. Our line: {"set", "question_id", "image", "prompt", "answer", "model_id"}.

Answer files of other tools are read too, for `--score-only`:
- LLaVA's `model_vqa_loader.py` (and HA-DPO's copy of it): {"question_id", "prompt", "text",
  "answer_id", "model_id", "metadata"}, the answer in `text`;
- HA-DPO's `pope_eval.py`: {"question", "answer", "question_id"}.
Neither names the POPE set, and the official question ids repeat across sets: the caller says
which set such a file answers.
"""

import glob
import json
import os
from dataclasses import dataclass

from eval.pope_questions import POPE_SETS, SET_ALIASES
from post_decoder.atomic_files import atomic_file
from post_decoder.errors import InputError


@dataclass
class AnswerLine:
    """One answer as read, with where it was read (for messages)."""

    record: dict
    set_name: str
    where: str

    @property
    def question_id(self):
        return self.record["question_id"]

    @property
    def text(self) -> str:
        """The answer: `answer` in ours and HA-DPO's files, `text` in LLaVA's."""
        return self.record["answer"] if "answer" in self.record else self.record["text"]

    @property
    def asked(self) -> str | None:
        """The question as the answering tool recorded it (possibly with a prompt suffix), if it did."""
        return self.record.get("prompt", self.record.get("question"))


def part_path(answers_file: str, rank: int) -> str:
    return f"{answers_file}.part{rank}"


def existing_paths(answers_file: str) -> list[str]:
    """The answers file and its part files that hold anything (an empty one is not a run)."""
    candidates = [answers_file, *sorted(glob.glob(f"{glob.escape(answers_file)}.part*"))]
    return [path for path in candidates if os.path.isfile(path) and os.path.getsize(path) > 0]


def read_answers(paths: list[str], set_name: str | None = None) -> dict[tuple[str, object], AnswerLine]:
    """(set, question_id) -> answer. `set_name` is the set of answers that do not name theirs (None:
    every answer must). A torn last line (a crash mid-write) is dropped; any other malformed line is
    an error naming its file and line."""
    if set_name is not None:
        set_name = SET_ALIASES.get(set_name, set_name)
    answers = {}
    for path in paths:
        with open(path, "rb") as handle:
            lines = handle.readlines()
        for number, raw in enumerate(lines, start=1):
            where = f"{path}:{number}"
            if not raw.strip():
                continue
            try:
                record = json.loads(raw.decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError):
                if number == len(lines) and not raw.endswith(b"\n"):
                    continue  # the line being written when the run stopped; it is answered again
                raise InputError(f"{where}: not a JSON object") from None
            line = AnswerLine(record, _set_of(record, set_name, where), where)
            answers[(line.set_name, line.question_id)] = line
    return answers


def _set_of(record, set_name: str | None, where: str) -> str:
    if not isinstance(record, dict):
        raise InputError(f"{where}: expected a JSON object, got {type(record).__name__}")
    if "question_id" not in record or not ("answer" in record or "text" in record):
        raise InputError(f"{where}: an answer needs question_id and answer (or text, LLaVA's key)")
    answer = record["answer"] if "answer" in record else record["text"]
    if not isinstance(answer, str):
        raise InputError(f"{where}: the answer must be a string, got {answer!r}")
    if "label" in record and "answer" not in record and "prompt" not in record:
        raise InputError(f"{where}: this looks like a POPE question file (text and label), not answers")
    named = record.get("set")
    if named is None:
        if set_name is None:
            raise InputError(
                f"{where}: this answer does not name its POPE set and the question ids repeat across sets: score one "
                "set with --set random|popular|adv, or give each file its set: --answers-file random=FILE ..."
            )
        return set_name
    named = SET_ALIASES.get(named, named)
    if named not in POPE_SETS:
        raise InputError(f"{where}: unknown POPE set {record['set']!r}; expected one of {', '.join(POPE_SETS)}")
    return named


class AnswerWriter:
    """Appends records to one part file, flushed line by line. The file is created by the first
    answer, so a run that stops before answering anything leaves nothing behind."""

    def __init__(self, path: str):
        self.path = path
        self.handle = None

    def write(self, record: dict):
        if self.handle is None:
            self.handle = open(self.path, "a", encoding="utf-8")
        self.handle.write(json.dumps(record) + "\n")
        self.handle.flush()

    def close(self):
        if self.handle is not None:
            self.handle.close()


def merge_answers(answers_file: str) -> dict[tuple[str, object], AnswerLine]:
    """Merge the parts and earlier answers into `answers_file` (sorted by set, then question_id),
    written whole, then remove the parts (and any empty ones)."""
    paths = existing_paths(answers_file)
    answers = read_answers(paths)
    order = {name: index for index, name in enumerate(POPE_SETS)}
    ordered = sorted(answers.values(), key=lambda line: (order[line.set_name], str(line.question_id).zfill(12)))
    with atomic_file(answers_file) as temporary:
        with open(temporary, "w", encoding="utf-8") as handle:
            handle.writelines(json.dumps(line.record) + "\n" for line in ordered)
    for path in glob.glob(f"{glob.escape(answers_file)}.part*"):
        os.remove(path)
    return answers
