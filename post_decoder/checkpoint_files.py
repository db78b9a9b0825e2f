"""A checkpoint folder's weight files, read key by key and rewritten without ever corrupting them.

Formats: safetensors or `.bin` (read with `weights_only=True`), one file or shards with their
index. Key layouts are the family's (`family.key_layout`; LLaVA's three are in
`families/llava/key_layouts.py`). Keys are shown under our model's names (its `state_dict()`) and
written back under the checkpoint's own; a block's keys are `post_decoder.*` in every layout.

Rewriting only touches the files that change: either into a new folder (a copy of the old one's
model files: not the results of runs that describe the old model), or in place, each file replaced
atomically with its previous version kept as `NAME.bak`.
"""

import json
import os
import shutil
import stat
from contextlib import ExitStack
from dataclasses import dataclass

import torch
from safetensors.torch import save_file
from transformers.tokenization_utils_base import (
    ADDED_TOKENS_FILE,
    FULL_TOKENIZER_FILE,
    SPECIAL_TOKENS_MAP_FILE,
    TOKENIZER_CONFIG_FILE,
)
from transformers.utils import (
    CHAT_TEMPLATE_FILE,
    GENERATION_CONFIG_NAME,
    IMAGE_PROCESSOR_NAME,
    LEGACY_PROCESSOR_CHAT_TEMPLATE_FILE,
    PROCESSOR_NAME,
)

from .atomic_files import atomic_directory, atomic_file
from .errors import InputError
from .family import family_for_checkpoint
from .saving import (
    SINGLE_WEIGHT_FILES,
    WEIGHT_INDEXES,
    MissingCheckpointFile,
    check_new_folder,
    read_safetensors_header,
    read_weight_file,
    shard_names,
)

CONFIG = "config.json"
BACKUP_SUFFIX = ".bak"
_WEIGHT_SUFFIXES = (".safetensors", ".bin")
# Besides its weights, what a model folder is made of. Anything else in a checkpoint's folder (POPE
# results, training summaries, logs, *.bak) describes that model, not one written from it.
MODEL_FOLDER_FILES = (
    CONFIG,
    GENERATION_CONFIG_NAME,
    IMAGE_PROCESSOR_NAME,
    PROCESSOR_NAME,
    CHAT_TEMPLATE_FILE,
    LEGACY_PROCESSOR_CHAT_TEMPLATE_FILE,
    TOKENIZER_CONFIG_FILE,
    SPECIAL_TOKENS_MAP_FILE,
    ADDED_TOKENS_FILE,
    FULL_TOKENIZER_FILE,
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
)

_SAFETENSORS_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}


@dataclass(frozen=True)
class TensorSpec:
    shape: tuple[int, ...]
    dtype: torch.dtype
    file: str  # where the tensor is stored, for messages


class CheckpointFolder:
    """The weights of one checkpoint. `path` is its folder, its index file, or one of its weight
    files (as HA-DPO's replace_bin.py took a shard): a named shard is where new keys are added;
    otherwise they go to the file that holds `lm_head`."""

    def __init__(self, path: str):
        path = os.path.abspath(path)
        if not os.path.exists(path):
            raise MissingCheckpointFile(f"checkpoint {path} does not exist")
        self.folder = path if os.path.isdir(path) else os.path.dirname(path)
        named = None if os.path.isdir(path) else os.path.basename(path)
        self.index_name, files = self._find_files(named)
        self.weight_files = files
        self.config_path = os.path.join(self.folder, CONFIG)
        if not os.path.isfile(self.config_path):
            raise MissingCheckpointFile(f"checkpoint {self.folder} has no {CONFIG}")
        with open(self.config_path) as handle:
            self.config = json.load(handle)

        self._specs: dict[str, TensorSpec] = {}  # checkpoint key -> spec
        self.weight_map: dict[str, str] = {}  # checkpoint key -> file name
        for name in files:
            for key, spec in _read_specs(os.path.join(self.folder, name)).items():
                self._specs[key] = spec
                self.weight_map[key] = name
        if self.index_name:
            self._check_index(files)
        self.family = family_for_checkpoint(self.config, self.folder)
        self.layout = self.family.key_layout(self.config, list(self._specs), self.folder)
        self._to_checkpoint: dict[str, str] = {}
        for key in self._specs:
            ours = self.layout.to_ours(key)
            if ours in self._to_checkpoint:
                raise InputError(f"{self.folder}: {self._to_checkpoint[ours]} and {key} are both {ours} in our names")
            self._to_checkpoint[ours] = key
        head_file = self.weight_map.get(self._to_checkpoint.get(self.family.head_key, ""))
        self.new_keys_file = named or head_file or sorted(files)[-1]

    @property
    def description(self) -> str:
        return os.path.join(self.folder, self.index_name or self.new_keys_file)

    def specs(self) -> dict[str, TensorSpec]:
        """Shape, dtype and file of every stored tensor, under our names."""
        return {ours: self._specs[key] for ours, key in self._to_checkpoint.items()}

    def checkpoint_name(self, ours: str) -> str:
        """The checkpoint's own name for one of our names (a new key keeps our name)."""
        return self._to_checkpoint.get(ours, ours)

    def stored_dtype(self) -> torch.dtype:
        """The dtype the checkpoint stores its weights in: its head's, else its most common float."""
        specs, head = self.specs(), self.family.head_key
        if head in specs:
            return specs[head].dtype
        floats = [spec.dtype for spec in specs.values() if spec.dtype.is_floating_point]
        return max(set(floats), key=floats.count)

    # --- rewriting ---

    def model_files(self) -> list[str]:
        """The files of this folder that make up the model: weights, index, config, tokenizer, processor, and the
        family's sub-folders (InstructBLIP's Q-Former tokenizer)."""
        present = [name for name in MODEL_FOLDER_FILES if os.path.isfile(os.path.join(self.folder, name))]
        folders = [name for name in self.family.model_folders if os.path.isdir(os.path.join(self.folder, name))]
        return sorted({*present, *folders, *self.weight_files, *([self.index_name] if self.index_name else [])})

    def rewrite(
        self,
        updates: dict[str, torch.Tensor],
        config: dict | None,
        output: str | None = None,
        overwrite_backup: bool = False,
    ) -> list[str]:
        """Store `updates` (our names; new keys are added) and, if given, a new config.json.

        output: a new folder (must not exist) holding this one's model files, with the changed files;
        None: replace the changed files in place, each kept as `NAME.bak`. Returns the files written."""
        changes: dict[str, dict[str, torch.Tensor]] = {}
        size_change = 0
        for ours, tensor in updates.items():
            key = self.checkpoint_name(ours)
            changes.setdefault(self.weight_map.get(key, self.new_keys_file), {})[key] = tensor
            old = self._specs.get(key)
            size_change += _nbytes(tensor.shape, tensor.dtype) - (_nbytes(old.shape, old.dtype) if old else 0)
        writers = {name: _weight_file_writer(os.path.join(self.folder, name), keys) for name, keys in changes.items()}
        if self.index_name:
            writers[self.index_name] = _json_writer(self._updated_index(changes, size_change))
        if config is not None:
            writers[CONFIG] = _json_writer(config)
        if output is None:
            replace_in_place(self.folder, writers, overwrite_backup)
        else:
            write_new_folder(self.folder, output, writers, self.model_files())
        return list(writers)

    def _updated_index(self, changes: dict[str, dict[str, torch.Tensor]], size_change: int) -> dict:
        with open(os.path.join(self.folder, self.index_name)) as handle:
            index = json.load(handle)
        for name, keys in changes.items():
            for key in keys:
                index["weight_map"].setdefault(key, name)
        if isinstance(index.get("metadata"), dict) and "total_size" in index["metadata"]:
            index["metadata"]["total_size"] += size_change
        return index

    # --- reading ---

    def _find_files(self, named: str | None) -> tuple[str | None, list[str]]:
        """(index name or None, weight file names) of the checkpoint."""
        if named in WEIGHT_INDEXES:
            return named, self._index_files(named)
        if named is not None and not named.endswith(_WEIGHT_SUFFIXES):
            raise InputError(
                f"{os.path.join(self.folder, named)} is neither a weight file (.safetensors, .bin) nor an index"
            )
        indexes = [name for name in WEIGHT_INDEXES if os.path.isfile(os.path.join(self.folder, name))]
        if named is not None:
            indexes = [name for name in indexes if named.endswith(WEIGHT_INDEXES[name])]
        if indexes:
            files = self._index_files(indexes[0])
            if named is not None and named not in files:
                raise InputError(f"{os.path.join(self.folder, named)} is not one of the shards of {indexes[0]}")
            return indexes[0], files
        if named is not None:
            return None, [named]
        singles = [name for name in SINGLE_WEIGHT_FILES if os.path.isfile(os.path.join(self.folder, name))]
        if not singles:
            raise MissingCheckpointFile(
                f"no weights in {self.folder}: expected one of {', '.join([*WEIGHT_INDEXES, *SINGLE_WEIGHT_FILES])}"
            )
        return None, singles[:1]

    def _index_files(self, index_name: str) -> list[str]:
        files = shard_names(os.path.join(self.folder, index_name))
        absent = [name for name in files if not os.path.isfile(os.path.join(self.folder, name))]
        if absent:
            raise MissingCheckpointFile(
                f"{os.path.join(self.folder, index_name)} names shards that are not there: {', '.join(absent)}"
            )
        return files

    def _check_index(self, files: list[str]):
        with open(os.path.join(self.folder, self.index_name)) as handle:
            indexed = json.load(handle)["weight_map"]
        wrong = sorted(key for key, name in indexed.items() if self.weight_map.get(key) != name)
        if wrong:
            raise InputError(
                f"{os.path.join(self.folder, self.index_name)} does not match its shards: "
                + ", ".join(
                    f"{key} (index: {indexed[key]}, found in: {self.weight_map.get(key)})" for key in wrong[:5]
                )
            )


def _read_specs(path: str) -> dict[str, TensorSpec]:
    if path.endswith(".safetensors"):
        header, _ = read_safetensors_header(path)
        return {key: TensorSpec(shape, _SAFETENSORS_DTYPES[dtype], path) for key, (shape, dtype) in header.items()}
    state = read_weight_file(path)  # .bin: mapped, not read
    return {key: TensorSpec(tuple(tensor.shape), tensor.dtype, path) for key, tensor in state.items()}


def _nbytes(shape, dtype: torch.dtype) -> int:
    return torch.Size(shape).numel() * dtype.itemsize


# --- writers: each takes the path to write to ---


def write_weight_file(state: dict[str, torch.Tensor], path: str, metadata: dict | None = None):
    """Write one weight file in the format its name's suffix says."""
    if path.endswith(".safetensors"):
        save_file(
            {key: tensor.contiguous() for key, tensor in state.items()}, path, metadata=metadata or {"format": "pt"}
        )
    else:
        torch.save(state, path)


def _weight_file_writer(source: str, changes: dict[str, torch.Tensor]):
    """Writes `source` with `changes` applied (replaced or added keys), in `source`'s format."""

    def write(path: str):
        metadata = read_safetensors_header(source)[1] if source.endswith(".safetensors") else None
        state = read_weight_file(source)
        state.update(changes)
        write_weight_file(state, path, metadata)

    return write


def _json_writer(content: dict):
    def write(path: str):
        with open(path, "w") as handle:
            json.dump(content, handle, indent=2, sort_keys=False)
            handle.write("\n")

    return write


class BackupsInTheWay(InputError, FileExistsError):
    """`NAME.bak` files of an earlier in-place rewrite that this one would replace."""


def replace_in_place(folder: str, writers: dict, overwrite_backup: bool = False):
    """Write every file to a temporary name first; only when all are written, keep each old file
    as `NAME.bak` and rename the new one over it. A failure while writing leaves `folder` as it was."""
    existing_backups = [
        name + BACKUP_SUFFIX for name in writers if os.path.exists(os.path.join(folder, name + BACKUP_SUFFIX))
    ]
    if existing_backups and not overwrite_backup:
        raise BackupsInTheWay(
            f"backups from an earlier run are in {folder}: {', '.join(existing_backups)}; move them away, "
            "write to a new folder with --output, or pass --overwrite_backup"
        )
    modes = {
        name: stat.S_IMODE(os.stat(os.path.join(folder, name)).st_mode)
        for name in writers
        if os.path.exists(os.path.join(folder, name))
    }
    # atomic_file renames when its block exits: ExitStack exits in reverse order, so config.json,
    # entered first, is renamed last (a crash in between never leaves a config naming absent weights).
    with ExitStack() as renames:
        temporaries = {}
        for name in sorted(writers, key=lambda name: name != CONFIG):
            # The temporary keeps the suffix: it says the format to write.
            temporaries[name] = renames.enter_context(atomic_file(os.path.join(folder, name)))
        for name, write in writers.items():
            write(temporaries[name])
        for name in modes:
            _keep_backup(os.path.join(folder, name))
    for name, mode in modes.items():  # a rewritten file keeps the permissions of the one it replaces
        os.chmod(os.path.join(folder, name), mode)


def _keep_backup(path: str):
    """`path` -> `path.bak` (a hard link when the file system allows: no copy of a large shard)."""
    mode = stat.S_IMODE(os.stat(path).st_mode)
    with atomic_file(path + BACKUP_SUFFIX) as staging:
        os.remove(staging)
        try:
            os.link(path, staging)
        except OSError:
            shutil.copy2(path, staging)
    os.chmod(path + BACKUP_SUFFIX, mode)  # atomic_file set the user's default; a link shares it with `path`


def write_new_folder(source: str, output: str, writers: dict, keep: list[str]):
    """A new folder `output`: the files (and folders) `keep` of `source` copied, except those that `writers` write;
    all or nothing."""
    check_new_folder(output, "--output")
    output = os.path.abspath(output)
    if output.startswith(os.path.abspath(source) + os.sep):
        raise InputError(f"--output {output} is inside the checkpoint {source}; name a folder outside it")
    with atomic_directory(output) as staging:
        for name in keep:
            if name in writers:
                continue
            if os.path.isdir(os.path.join(source, name)):
                shutil.copytree(os.path.join(source, name), os.path.join(staging, name))
            else:
                shutil.copy2(os.path.join(source, name), os.path.join(staging, name))
        for name, write in writers.items():
            write(os.path.join(staging, name))
