"""A converted MiniGPT-4 folder (ours, `model_type: minigpt4`) -> (tokenizer, model, image processor)."""

import torch

from ...errors import InputError
from ...saving import listing
from ..llava.tokenizer import load_tokenizer
from .image_processing import load_image_processor
from .modeling import MiniGPT4ForConditionalGeneration


def load_minigpt4(model_path: str, dtype: torch.dtype, device_map=None):
    model, info = MiniGPT4ForConditionalGeneration.from_pretrained(
        model_path, dtype=dtype, device_map=device_map, output_loading_info=True
    )
    missing, unexpected = sorted(info["missing_keys"]), sorted(info["unexpected_keys"])
    if missing or unexpected or info["mismatched_keys"]:
        raise InputError(
            f"weights in {model_path} do not fit its config.json: convert or copy the checkpoint again\n"
            + listing("missing", missing)
            + listing("unexpected", unexpected)
            + listing("mis-shaped", sorted(map(str, info["mismatched_keys"])))
        )
    # MiniGPT-4 loads Llama's tokenizer with use_fast=False: the SentencePiece ids, when the folder ships them.
    return load_tokenizer(model_path), model, load_image_processor(model_path)
