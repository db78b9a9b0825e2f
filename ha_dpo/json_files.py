"""Reading a data set's JSON file, with errors that name the file."""

import json
import os


def read_json(path: str, what: str):
    """The parsed file; `what` says which file it should be ("HA-DPO desc_data.json")."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{what} not found: {path}")
    with open(path) as handle:
        try:
            return json.load(handle)
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}: not valid JSON ({error})") from error
