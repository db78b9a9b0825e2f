"""A full LLaVA-1.5 checkpoint in any of its formats -> (tokenizer, model, image processor)."""

import torch
from transformers import LlavaConfig

from ...builder import from_pretrained_strictly
from ...llama_tokenizer import load_tokenizer
from .configuration import LlavaPostDecoderConfig, is_original_llava_config
from .image_processing import load_image_processor
from .modeling import LlavaPostDecoderForConditionalGeneration
from .original import load_original_llava


def load_llava(model_path: str, raw_config: dict, dtype: torch.dtype, device_map=None):
    """llava-hf folders (either key layout), our saved folders, original LLaVA-1.5 folders (converted in memory)."""
    if is_original_llava_config(raw_config):
        model, tokenizer, image_processor = load_original_llava(
            model_path, LlavaPostDecoderForConditionalGeneration, dtype
        )
        return tokenizer, model, image_processor

    if raw_config.get("model_type") == LlavaPostDecoderConfig.model_type:
        config = LlavaPostDecoderConfig.from_pretrained(model_path)
    else:
        config = LlavaPostDecoderConfig.from_llava_config(LlavaConfig.from_pretrained(model_path))
    model = from_pretrained_strictly(LlavaPostDecoderForConditionalGeneration, model_path, config, dtype, device_map)
    tokenizer = load_tokenizer(model_path)  # LLaVA's SentencePiece ids when the folder ships tokenizer.model
    return tokenizer, model, load_image_processor(model_path)
