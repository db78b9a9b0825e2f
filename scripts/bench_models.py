"""The models the benchmarks run: LLaVA-1.5-7B's shape (random weights) or the tiny test shape,
with an optional block moved away from its identity start so that it does real work."""

import json
import os
import tempfile

import torch
from transformers import AutoTokenizer, LlavaConfig

from post_decoder.families.llava import LlavaPostDecoderConfig, LlavaPostDecoderForConditionalGeneration
from post_decoder.families.llava.conversation import add_llava_tokens
from post_decoder.families.llava.image_processing import load_image_processor
from post_decoder.families.llava.tiny import clip_preprocessor_config, tiny_llava_config, train_tiny_tokenizer


def build_model(shape: str, device: str, dtype: torch.dtype, with_block: bool):
    folder = tempfile.mkdtemp()
    shared_tokenizer = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "tokenizers", "llama2")
    if shape == "7b" and os.path.isdir(shared_tokenizer):
        tokenizer = add_llava_tokens(AutoTokenizer.from_pretrained(shared_tokenizer))
    else:
        tokenizer = add_llava_tokens(train_tiny_tokenizer(os.path.join(folder, "tokenizer")))
    text_vocab = len(tokenizer) - 2
    if shape == "7b":
        config = LlavaConfig(image_token_index=text_vocab, pad_token_id=text_vocab + 1)
        config.text_config.vocab_size = 32064
    else:
        config = tiny_llava_config(text_vocab)
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
