"""Reading a data set's JSON file, with errors that name the file."""

import json
import os

from post_decoder.errors import InputError


class DataFileNotFoundError(InputError, FileNotFoundError):
    """A data file that is not there: an input error (one line, exit 2) that callers may also catch as
    `FileNotFoundError`."""


def read_json(path: str, what: str):
    """The parsed file; `what` says which file it should be ("HA-DPO desc_data.json")."""
    if not os.path.isfile(path):
        raise DataFileNotFoundError(f"{what} not found: {path}")
    try:
        with open(path, encoding="utf-8-sig") as handle:  # a BOM is harmless
            return json.load(handle)
    except UnicodeDecodeError as error:
        raise InputError(
            f"{path}: not UTF-8 text (byte {error.start} is {error.object[error.start : error.start + 1]!r}); "
            "save the file as UTF-8"
        ) from error
    except json.JSONDecodeError as error:
        raise InputError(f"{path}: not valid JSON ({error})") from error
