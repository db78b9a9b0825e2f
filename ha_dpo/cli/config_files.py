"""Recipe files: a run's settings in a committed JSON file (as torchtune's recipe configs), given to a
training script as `--config FILE`, with command-line flags overriding it.

A recipe is one JSON object: field names of the script's argument dataclasses (without `--`; the old
names `warmup_ratio` and `evaluation_strategy` are accepted as on the command line) mapped to values
(strings, numbers, true/false, or lists for flags that take several). `arguments_from` builds the
dataclasses from such settings in Python, for library callers (the toy quickstart).
"""

import json
from dataclasses import fields

from post_decoder.errors import InputError

from .arguments import RENAMED_FLAGS

CONFIG_FLAG = "--config"
CONFIG_HELP = (
    "a JSON recipe of settings (flag names without --, e.g. ha_dpo/toy/recipe_stage1.json); "
    "flags on the command line override it"
)


def read_config(path: str) -> dict:
    """The settings of a recipe file, checked to be a JSON object of names to values."""
    try:
        with open(path, encoding="utf-8") as handle:
            settings = json.load(handle)
    except FileNotFoundError as error:
        raise InputError(f"{CONFIG_FLAG} {path}: no such file") from error
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise InputError(f"{CONFIG_FLAG} {path}: not a JSON file ({error})") from error
    if not isinstance(settings, dict):
        raise InputError(f"{CONFIG_FLAG} {path}: expected a JSON object of settings, found {type(settings).__name__}")
    for name, value in settings.items():
        if value is None or isinstance(value, dict) or (isinstance(value, list) and not value):
            raise InputError(
                f"{CONFIG_FLAG} {path}: {name} is {json.dumps(value)}; give a value, or leave the setting out for "
                "its default"
            )
    return settings


def _field_names(dataclass_types) -> set[str]:
    return {item.name for dataclass_type in dataclass_types for item in fields(dataclass_type) if item.init}


def _new_name(name: str) -> str:
    return RENAMED_FLAGS.get(f"--{name}", f"--{name}")[2:]


def _check_names(settings: dict, dataclass_types, source: str) -> None:
    known = _field_names(dataclass_types)
    unknown = [name for name in settings if _new_name(name) not in known]
    if unknown:
        raise InputError(f"{source}: unknown setting {unknown[0]!r} (settings are the flags' names, without --)")


def _flag_value(value) -> list[str]:
    values = value if isinstance(value, list) else [value]
    return [str(item) if not isinstance(item, bool) else ("True" if item else "False") for item in values]


def config_flags(argv: list[str], dataclass_types) -> list[str]:
    """`argv` with `--config FILE` replaced by the recipe's settings as flags, put first so that the other
    flags on the command line override them (argparse keeps the last value given)."""
    rest, path = [], None
    arguments = iter(argv)
    for argument in arguments:
        if argument == CONFIG_FLAG:
            path = next(arguments, None)
            if path is None or path.startswith("--"):
                raise InputError(f"{CONFIG_FLAG} needs a file: {CONFIG_FLAG} recipe.json")
        elif argument.startswith(CONFIG_FLAG + "="):
            path = argument.partition("=")[2]
        else:
            rest.append(argument)
    if path is None:
        return rest
    settings = read_config(path)
    _check_names(settings, dataclass_types, f"{CONFIG_FLAG} {path}")
    flags = []
    for name, value in settings.items():
        flags += [f"--{name}", *_flag_value(value)]
    return flags + rest


def arguments_from(dataclass_types, settings: dict) -> tuple:
    """The dataclasses built from `settings` (a recipe's, with a caller's changes), each checking itself
    as on the command line: the library's way to the arguments of a training run."""
    _check_names(settings, dataclass_types, "settings")
    settings = {_new_name(name): value for name, value in settings.items()}
    built = []
    for dataclass_type in dataclass_types:
        names = _field_names([dataclass_type])
        built.append(dataclass_type(**{name: value for name, value in settings.items() if name in names}))
    return tuple(built)
