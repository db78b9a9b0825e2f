"""A block alone on disk: `post_decoder_config.json` + `post_decoder.safetensors` (a folder that
`load_pretrained_model(folder, model_base=BASE)` opens), and the block's tensors in a model's state dict."""

import os

import torch
from safetensors.torch import save_file

from ..atomic_files import atomic_directory, atomic_file
from ..saving import MissingCheckpointFile, load_state_strictly, read_weight_file
from .configuration import PostDecoderConfig
from .module import PostInteractionBlock

POST_DECODER_CONFIG = "post_decoder_config.json"
POST_DECODER_WEIGHTS = "post_decoder.safetensors"
BLOCK_PREFIX = "post_decoder."  # the block's tensors in a model's state dict (the attribute every family uses)


def block_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The block's tensors of a model's state dict, under the block's own names (without `post_decoder.`)."""
    return {name[len(BLOCK_PREFIX) :]: tensor for name, tensor in state.items() if name.startswith(BLOCK_PREFIX)}


def write_block_files(config: PostDecoderConfig, state: dict[str, torch.Tensor], directory: str):
    """The two files of a block into `directory`, each written whole and renamed into place."""
    with atomic_file(os.path.join(directory, POST_DECODER_CONFIG)) as temporary:
        config.to_json_file(temporary)
    state = {name: tensor.detach().cpu().contiguous() for name, tensor in state.items()}
    with atomic_file(os.path.join(directory, POST_DECODER_WEIGHTS)) as temporary:
        save_file(state, temporary, metadata={"format": "pt"})


def save_post_decoder(block: PostInteractionBlock, directory: str):
    """The block alone, as a new folder (all or nothing); `load_pretrained_model(directory, model_base=BASE)`
    opens it."""
    with atomic_directory(directory) as staging:
        write_block_files(block.config, block.state_dict(), staging)


def is_post_decoder_folder(path: str) -> bool:
    return os.path.isfile(os.path.join(path, POST_DECODER_CONFIG)) and not os.path.isfile(
        os.path.join(path, "config.json")
    )


def read_post_decoder_config(directory: str) -> PostDecoderConfig:
    return PostDecoderConfig.from_json_file(os.path.join(directory, POST_DECODER_CONFIG))


def load_post_decoder_weights(block: PostInteractionBlock, directory: str):
    """Load saved block weights, strictly: missing, unexpected or mis-shaped tensors are an error."""
    path = os.path.join(directory, POST_DECODER_WEIGHTS)
    if not os.path.isfile(path):
        raise MissingCheckpointFile(f"no block weights: {path} is missing")
    load_state_strictly(block, read_weight_file(path), f"post-decoder weights {path}")
