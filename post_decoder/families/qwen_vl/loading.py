"""A full Qwen-VL checkpoint -> (tokenizer, model, image processor).

Reads the hub layout (`Qwen/Qwen2.5-VL-7B-Instruct`: config.json, safetensors shards with `model.*`/`visual.*`
keys, preprocessor_config.json, tokenizer files, chat_template) and our saved folders (our model types, with a
block). The image processor is `Qwen2VLImageProcessorPil` (no torchvision), read from preprocessor_config.json,
with `min_pixels` / `max_pixels` when the caller sets them.
"""

import os

import torch
from transformers import AutoTokenizer
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

from ...builder import from_pretrained_strictly
from ...errors import InputError

PREPROCESSOR_CONFIG = "preprocessor_config.json"


def load_qwen_vl(family, model_path: str, raw_config: dict, dtype: torch.dtype, device_map=None, **image_options):
    if raw_config.get("model_type") == family.config_class.model_type:
        config = family.config_class.from_pretrained(model_path)
    else:
        config = family.with_block(family.plain_config_class.from_pretrained(model_path))
    model = from_pretrained_strictly(family.model_class, model_path, config, dtype, device_map)
    return AutoTokenizer.from_pretrained(model_path), model, load_image_processor(model_path, **image_options)


def load_image_processor(model_path: str, **image_options) -> Qwen2VLImageProcessorPil:
    """The folder's image processor; `min_pixels` / `max_pixels` override its resize bounds."""
    if os.path.isdir(model_path) and not os.path.isfile(os.path.join(model_path, PREPROCESSOR_CONFIG)):
        raise InputError(
            f"{model_path} has no {PREPROCESSOR_CONFIG}: copy it from the base model's folder (Qwen-VL's image "
            "processor, its patch and merge sizes and pixel bounds, is read from it)"
        )
    processor = Qwen2VLImageProcessorPil.from_pretrained(model_path, **image_options)
    shortest, longest = processor.size["shortest_edge"], processor.size["longest_edge"]
    if shortest > longest:
        raise InputError(f"min_pixels {shortest} is above max_pixels {longest}: pass min_pixels <= max_pixels")
    return processor
