"""A converted MiniGPT-4 folder (ours, `model_type: minigpt4`) -> (tokenizer, model, image processor)."""

import torch

from ...builder import from_pretrained_strictly
from ...llama_tokenizer import load_tokenizer
from .image_processing import load_image_processor
from .modeling import MiniGPT4ForConditionalGeneration


def load_minigpt4(model_path: str, dtype: torch.dtype, device_map=None):
    model = from_pretrained_strictly(MiniGPT4ForConditionalGeneration, model_path, None, dtype, device_map)
    # MiniGPT-4 loads Llama's tokenizer with use_fast=False: the SentencePiece ids, when the folder ships them.
    return load_tokenizer(model_path), model, load_image_processor(model_path)
