"""A full InstructBLIP checkpoint (the hub's layout, or our saved folders) -> (tokenizer, model, processor)."""

import os

import torch
from transformers import AutoTokenizer, InstructBlipConfig, InstructBlipProcessor
from transformers.models.blip.image_processing_pil_blip import BlipImageProcessorPil

from ...builder import from_pretrained_strictly
from ...errors import InputError
from .configuration import InstructBlipPostDecoderConfig
from .modeling import InstructBlipPostDecoderForConditionalGeneration

QFORMER_TOKENIZER_FOLDER = "qformer_tokenizer"  # where InstructBlipProcessor keeps the Q-Former's tokenizer


def load_instructblip(model_path: str, raw_config: dict, dtype: torch.dtype, device_map=None):
    """The hub's `Salesforce/instructblip-vicuna-*` folders and ours (`model_type: instructblip_post_decoder`)."""
    if raw_config.get("model_type") == InstructBlipPostDecoderConfig.model_type:
        config = InstructBlipPostDecoderConfig.from_pretrained(model_path)
    else:
        config = InstructBlipPostDecoderConfig.from_instructblip_config(InstructBlipConfig.from_pretrained(model_path))
    model = from_pretrained_strictly(
        InstructBlipPostDecoderForConditionalGeneration, model_path, config, dtype, device_map
    )
    processor = load_processor(model_path, config.num_query_tokens)
    return processor.tokenizer, model, processor


def load_processor(model_path: str, num_query_tokens: int) -> InstructBlipProcessor:
    """InstructBLIP's processor, built from its parts so that every machine preprocesses alike: the PIL image
    processor (transformers would pick torchvision's where it is installed; the settings are in the hub's
    preprocessor_config.json or inside processor_config.json, as transformers 5 saves them), the language model's
    tokenizer, the Q-Former's (BERT's, in `qformer_tokenizer/`)."""
    if os.path.isdir(model_path):  # (a hub id: from_pretrained says what is missing)
        present = set(os.listdir(model_path))
        if not present & {"preprocessor_config.json", "processor_config.json"}:
            raise InputError(
                f"{model_path} has no preprocessor_config.json or processor_config.json: copy the checkpoint's "
                "processor files into it"
            )
        if QFORMER_TOKENIZER_FOLDER not in present:
            raise InputError(
                f"{model_path} has no {QFORMER_TOKENIZER_FOLDER}/ (the Q-Former's tokenizer): copy it from the "
                "checkpoint"
            )
    return InstructBlipProcessor(
        image_processor=BlipImageProcessorPil.from_pretrained(model_path),
        tokenizer=AutoTokenizer.from_pretrained(model_path),
        qformer_tokenizer=AutoTokenizer.from_pretrained(model_path, subfolder=QFORMER_TOKENIZER_FOLDER),
        num_query_tokens=num_query_tokens,
    )
