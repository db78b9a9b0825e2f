"""Reading checkpoint shards, and writing folders so that a crash never leaves half of one."""

import json
import os

import torch
from safetensors.torch import load_file, save_file
from transformers.utils import cached_file

from .atomic_files import atomic_directory
from .block import PostInteractionBlock
from .configuration import PostDecoderConfig

POST_DECODER_CONFIG = "post_decoder_config.json"
POST_DECODER_WEIGHTS = "post_decoder.safetensors"
_SHARD_INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
_SINGLE_FILES = ("model.safetensors", "pytorch_model.bin")


def load_sharded_state_dict(model_path: str) -> dict[str, torch.Tensor]:
    """Every tensor of a checkpoint (folder or hub id): safetensors or `.bin`, one file or shards
    with an index. `.bin` files are read with `weights_only=True`."""
    for index_name in _SHARD_INDEXES:
        index_path = cached_file(model_path, index_name, _raise_exceptions_for_missing_entries=False)
        if index_path:
            with open(index_path) as handle:
                shards = sorted(set(json.load(handle)["weight_map"].values()))
            state = {}
            for shard in shards:
                state.update(_load_file(cached_file(model_path, shard)))
            return state
    for name in _SINGLE_FILES:
        path = cached_file(model_path, name, _raise_exceptions_for_missing_entries=False)
        if path:
            return _load_file(path)
    raise FileNotFoundError(f"no weights in {model_path}: expected one of {', '.join(_SHARD_INDEXES + _SINGLE_FILES)}")


def _load_file(path: str) -> dict[str, torch.Tensor]:
    if path.endswith(".safetensors"):
        return load_file(path)
    return torch.load(path, map_location="cpu", weights_only=True, mmap=True)


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


def save_post_decoder(block: PostInteractionBlock, directory: str):
    """The block alone: `post_decoder_config.json` + `post_decoder.safetensors` (open it with
    `load_pretrained_model(directory, model_base=BASE)`)."""
    with atomic_directory(directory) as staging:
        block.config.to_json_file(os.path.join(staging, POST_DECODER_CONFIG))
        state = {name: tensor.detach().cpu().contiguous() for name, tensor in block.state_dict().items()}
        save_file(state, os.path.join(staging, POST_DECODER_WEIGHTS), metadata={"format": "pt"})


def is_post_decoder_folder(path: str) -> bool:
    return os.path.isfile(os.path.join(path, POST_DECODER_CONFIG)) and not os.path.isfile(os.path.join(path, "config.json"))


def read_post_decoder_config(directory: str) -> PostDecoderConfig:
    return PostDecoderConfig.from_json_file(os.path.join(directory, POST_DECODER_CONFIG))


def load_post_decoder_weights(block: PostInteractionBlock, directory: str):
    """Load saved block weights, strictly: missing, unexpected or mis-shaped tensors are an error."""
    path = os.path.join(directory, POST_DECODER_WEIGHTS)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no block weights: {path} is missing")
    load_state_strictly(block, load_file(path), f"post-decoder weights {path}")


def check_state_fits(state: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], problem: str):
    """Raise ValueError(`problem` + every missing, unexpected and mis-shaped name) unless `state`
    has exactly `expected`'s names and shapes."""
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mis_shaped = sorted(
        f"{name}: checkpoint {tuple(state[name].shape)} vs model {tuple(expected[name].shape)}"
        for name in set(state) & set(expected)
        if state[name].shape != expected[name].shape
    )
    if missing or unexpected or mis_shaped:
        raise ValueError(
            f"{problem}:\n" + listing("missing", missing) + listing("unexpected", unexpected) + listing("mis-shaped", mis_shaped)
        )


def load_state_strictly(module: torch.nn.Module, state: dict[str, torch.Tensor], what: str, assign: bool = False):
    """`load_state_dict`, after checking that the key sets and shapes agree exactly (an error lists
    every difference). `assign=True` for a module built on the meta device."""
    check_state_fits(state, module.state_dict(), f"{what} do not fit the model")
    module.load_state_dict(state, assign=assign)
