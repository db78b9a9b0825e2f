"""Reading checkpoint shards, and writing folders so that a crash never leaves half of one.

A weight file that cannot be read (torn by an interrupted copy, or a `.bin` that holds more than
tensors) is an `InputError` naming the file: `.bin` files are only unpickled with
`weights_only=True`, since unpickling anything else can run code.
"""

import json
import os
import pickle
import re
import zipfile
from contextlib import contextmanager

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file
from transformers.utils import cached_file

from .atomic_files import atomic_directory
from .errors import InputError

# A checkpoint's weights: one of these indexes (with the suffix of its shards), else one of these files.
WEIGHT_INDEXES = {"model.safetensors.index.json": ".safetensors", "pytorch_model.bin.index.json": ".bin"}
SINGLE_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
PEFT_PREFIX = "base_model.model."  # names saved under PEFT; LLaVA's builder strips it too


class MissingCheckpointFile(InputError, FileNotFoundError):
    """A checkpoint file or folder that is not there (still a `FileNotFoundError` for callers that catch one)."""


def load_sharded_state_dict(model_path: str) -> dict[str, torch.Tensor]:
    """Every tensor of a checkpoint (folder or hub id): safetensors or `.bin`, one file or shards
    with an index. `.bin` files are read with `weights_only=True`."""
    for index_name in WEIGHT_INDEXES:
        index_path = cached_file(model_path, index_name, _raise_exceptions_for_missing_entries=False)
        if index_path:
            state = {}
            for shard in shard_names(index_path):
                shard_path = cached_file(model_path, shard, _raise_exceptions_for_missing_entries=False)
                if not shard_path:
                    raise MissingCheckpointFile(f"{index_path} names the shard {shard}, which is not there")
                state.update(read_weight_file(shard_path))
            return state
    for name in SINGLE_WEIGHT_FILES:
        path = cached_file(model_path, name, _raise_exceptions_for_missing_entries=False)
        if path:
            return read_weight_file(path)
    raise MissingCheckpointFile(
        f"no weights in {model_path}: expected one of {', '.join([*WEIGHT_INDEXES, *SINGLE_WEIGHT_FILES])}"
    )


def shard_names(index_path: str) -> list[str]:
    """The weight files an index (`*.index.json`) names, sorted, each once."""
    with open(index_path) as handle:
        return sorted(set(json.load(handle)["weight_map"].values()))


def read_weight_file(path: str) -> dict[str, torch.Tensor]:
    """Every tensor of one `.safetensors` or `.bin` file."""
    with readable_weight_file(path):
        if path.endswith(".safetensors"):
            return load_file(path)
        # mmap needs the zip format of torch >= 1.6; older (legacy) files are read whole
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    if not isinstance(state, dict) or not all(isinstance(value, torch.Tensor) for value in state.values()):
        raise InputError(f"{path} is not a state dict (a dict of name -> tensor)")
    return state


@contextmanager
def readable_weight_file(path: str):
    """Turn the errors of reading a torn or unsafe weight file into one line that names it."""
    try:
        yield
    except SafetensorError as error:
        raise InputError(
            f"{path} cannot be read as safetensors ({_first_line(error)}): it is truncated or damaged, "
            "perhaps by an interrupted download or copy; fetch or copy it again"
        ) from None
    except pickle.UnpicklingError as error:
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(error))
        what = f" ({found.group(1)})" if found else ""
        raise InputError(
            f"{path} holds Python objects besides tensors{what}, which are not unpickled since that can run "
            "code: save its tensors alone (a dict of name -> tensor) with torch.save or as .safetensors"
        ) from None
    except (RuntimeError, EOFError) as error:  # torch's zip reader, or a pickle cut short
        raise InputError(
            f"{path} cannot be read as a PyTorch weight file ({_first_line(error).split('. ')[0]}): it is "
            "truncated or damaged, perhaps by an interrupted download or copy; fetch or copy it again"
        ) from None


def _first_line(error: Exception) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


def read_safetensors_header(path: str) -> tuple[dict[str, tuple[tuple[int, ...], str]], dict | None]:
    """{name: (shape, safetensors dtype)} and the metadata of a `.safetensors` file, without its tensors."""
    with readable_weight_file(path), safe_open(path, "pt") as handle:
        specs = {}
        for key in handle.keys():
            piece = handle.get_slice(key)
            specs[key] = (tuple(piece.get_shape()), piece.get_dtype())
        return specs, handle.metadata()


def without_peft_prefix(name: str) -> str:
    return name[len(PEFT_PREFIX) :] if name.startswith(PEFT_PREFIX) else name


def check_new_folder(path: str, flag: str, empty_is_new: bool = False):
    """`path` (given as `flag`) must be a folder that can be made: not a file, not an existing folder
    (unless empty and `empty_is_new`), not below a file."""
    if os.path.isfile(path):
        raise InputError(f"{flag} {path} is a file; name a new folder")
    if os.path.exists(path) and not (empty_is_new and os.path.isdir(path) and not os.listdir(path)):
        raise InputError(f"{flag} {path} exists{' and is not empty' if empty_is_new else ''}; name a new folder")
    parent = os.path.dirname(os.path.abspath(path))
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise InputError(f"{flag} {path} is inside {parent}, which is a file; name a folder elsewhere")


def listing(title: str, names: list[str], limit: int = 20) -> str:
    """An indented list for error messages, cut after `limit` names."""
    if not names:
        return ""
    shown = "\n".join(f"    {name}" for name in names[:limit])
    more = f"\n    ... and {len(names) - limit} more" if len(names) > limit else ""
    return f"  {title} ({len(names)}):\n{shown}{more}\n"


def save_model_folder(model, tokenizer, image_processor, directory: str):
    """A complete folder that `load_pretrained_model` opens: weights, config, tokenizer, processor."""
    with atomic_directory(directory) as staging:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        image_processor.save_pretrained(staging)


def check_state_fits(state: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], problem: str):
    """Raise InputError(`problem` + every missing, unexpected and mis-shaped name) unless `state`
    has exactly `expected`'s names and shapes."""
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mis_shaped = sorted(
        f"{name}: checkpoint {tuple(state[name].shape)} vs model {tuple(expected[name].shape)}"
        for name in set(state) & set(expected)
        if state[name].shape != expected[name].shape
    )
    if missing or unexpected or mis_shaped:
        raise InputError(
            f"{problem}:\n"
            + listing("missing", missing)
            + listing("unexpected", unexpected)
            + listing("mis-shaped", mis_shaped)
        )


def load_state_strictly(module: torch.nn.Module, state: dict[str, torch.Tensor], what: str, assign: bool = False):
    """`load_state_dict`, after checking that the key sets and shapes agree exactly (an error lists
    every difference). `assign=True` for a module built on the meta device."""
    check_state_fits(state, module.state_dict(), f"{what} do not fit the model")
    module.load_state_dict(state, assign=assign)
