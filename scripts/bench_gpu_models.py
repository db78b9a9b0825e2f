"""The models `bench_gpu.py` measures: bench_models.py's two shapes (LLaVA-1.5-7B with random weights, or
the tiny test shape), plus what a short or offline run needs there: fewer layers (`layers`) and the
Llama-2 tokenizer from a given folder (the GPU machine has no ../shared beside its copy of the checkout).

It repeats bench_models.build_model's few lines rather than change that shared file; once
build_model takes `layers` and `tokenizer_path`, this module can go.
"""

import json
import os
import tempfile

import torch
from transformers import AutoTokenizer, LlavaConfig

from post_decoder.families.llava import LlavaPostDecoderConfig, LlavaPostDecoderForConditionalGeneration
from post_decoder.families.llava.conversation import add_llava_tokens
from post_decoder.families.llava.image_processing import load_image_processor
from post_decoder.families.llava.tiny import clip_preprocessor_config, tiny_llava_config, train_tiny_tokenizer

SHAPES = ("7b", "tiny")


def build_model(shape: str, device: str, dtype: torch.dtype, with_block: bool, layers=None, tokenizer_path=None):
    """(model, tokenizer, image processor). `tokenizer_path`: the Llama-2 tokenizer (7b shape only; else a
    small one is trained). `layers`: the LLM's and the vision tower's depth (None: the shape's own)."""
    folder = tempfile.mkdtemp(prefix="bench_gpu_model_")
    if shape == "7b" and tokenizer_path:
        tokenizer = add_llava_tokens(AutoTokenizer.from_pretrained(tokenizer_path))
    else:
        tokenizer = add_llava_tokens(train_tiny_tokenizer(os.path.join(folder, "tokenizer")))
    text_vocab = len(tokenizer) - 2
    if shape == "7b":
        config = LlavaConfig(image_token_index=text_vocab, pad_token_id=text_vocab + 1)
        config.text_config.vocab_size = 32064  # LLaVA-1.5-7B's padded embedding rows
    else:
        config = tiny_llava_config(text_vocab)
    if layers:
        config.text_config.num_hidden_layers = layers
        config.vision_config.num_hidden_layers = layers
    with open(os.path.join(folder, "preprocessor_config.json"), "w") as handle:
        json.dump(clip_preprocessor_config(config.vision_config.image_size), handle)
    with torch.device(device):
        model = LlavaPostDecoderForConditionalGeneration(LlavaPostDecoderConfig.from_llava_config(config))
    if with_block:
        model.attach_post_decoder("post_interaction")
        with torch.no_grad():  # away from the identity, so the block does real work
            for parameter in model.post_decoder.parameters():
                parameter.normal_(0, 0.02)
    return model.to(dtype).eval(), tokenizer, load_image_processor(folder)
