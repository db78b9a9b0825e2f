"""Descriptions as JSON lines, written as they come, so an interrupted CHAIR run resumes where it stopped.

One line per image: {"image_id", "image", "prompt", "caption", "model_id"} (`caption` as OPERA's and
LLaVA's CHAIR files name it; eval.chair_report reads it). Each rank appends to `{descriptions}.part{rank}`
(eval.answer_files' writer and part names, as POPE's answers); rank 0 merges the parts and any earlier
descriptions into `{descriptions}`, sorted by image id and written whole, so the file is the same for
any number of ranks.
"""

import glob
import json
import os

from eval.answer_files import existing_paths
from post_decoder.atomic_files import atomic_file
from post_decoder.errors import InputError


def read_descriptions(paths: list[str]) -> dict[int, dict]:
    """image_id -> record. A torn last line (a crash mid-write) is dropped: that image is described again.
    Any other malformed line is an error naming its file and line."""
    records = {}
    for path in paths:
        with open(path, "rb") as handle:
            lines = handle.readlines()
        for number, raw in enumerate(lines, start=1):
            if not raw.strip():
                continue
            try:
                record = json.loads(raw.decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError):
                if number == len(lines) and not raw.endswith(b"\n"):
                    continue
                raise InputError(f"{path}:{number}: not a JSON object") from None
            if not isinstance(record, dict) or not isinstance(record.get("image_id"), int):
                raise InputError(f"{path}:{number}: a description needs an integer image_id")
            if not isinstance(record.get("caption"), str):
                raise InputError(f"{path}:{number}: a description needs its text in caption")
            records[record["image_id"]] = record
    return records


def merge_descriptions(descriptions_file: str) -> dict[int, dict]:
    """Merge the parts and earlier descriptions into `descriptions_file` (by image id), written whole,
    then remove the parts."""
    records = read_descriptions(existing_paths(descriptions_file))
    with atomic_file(descriptions_file) as temporary:
        with open(temporary, "w", encoding="utf-8") as handle:
            handle.writelines(json.dumps(records[image_id]) + "\n" for image_id in sorted(records))
    for path in glob.glob(f"{glob.escape(descriptions_file)}.part*"):
        os.remove(path)
    return records
