"""The models the benchmarks run, by shape, with random weights and an optional block moved away from its identity
start so that it does real work:

- `7b`: LLaVA-1.5-7B's shape (the Llama-2 tokenizer from ../shared/data when there, else a small trained one);
- `tiny`: the tiny LLaVA of the tests;
- `qwen2_5_vl_7b`: Qwen/Qwen2.5-VL-7B-Instruct's published config.json and preprocessor_config.json values (its
  448x448 bench picture is 32x32 patches of 14 pixels, 256 image tokens); the tokenizer is a small one with
  Qwen's special tokens, so the special tokens' ids are its own, below the published 152,064 embedding rows;
- `qwen2_5_vl_tiny`: the tiny Qwen2.5-VL of the tests (a 32x32 bench picture: 16 image tokens, as tiny LLaVA's).

`layers` and `width_divisor` shrink a shape (the GPU run's short mode, the tests of the 7B shapes' code path).
"""

import json
import os
import tempfile

import torch
from transformers import AutoTokenizer, LlavaConfig, Qwen2_5_VLConfig

from post_decoder.families.llava import LlavaPostDecoderConfig, LlavaPostDecoderForConditionalGeneration
from post_decoder.families.llava.conversation import add_llava_tokens
from post_decoder.families.llava.image_processing import load_image_processor as load_clip_processor
from post_decoder.families.llava.tiny import clip_preprocessor_config, tiny_llava_config, train_tiny_tokenizer
from post_decoder.families.qwen_vl import QWEN2_5_VL
from post_decoder.families.qwen_vl.loading import load_image_processor as load_qwen_processor
from post_decoder.families.qwen_vl.tiny import (
    preprocessor_config,
    special_token_ids,
    tiny_qwen2_5_vl_config,
    train_tiny_qwen_tokenizer,
)

SHAPES = ("tiny", "7b", "qwen2_5_vl_tiny", "qwen2_5_vl_7b")
LLAMA2_TOKENIZER = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "tokenizers", "llama2")
# (width, height) of the random pictures the benchmarks ask about; LLaVA's processor resizes and crops any size.
QWEN_PICTURES = {"qwen2_5_vl_7b": (448, 448), "qwen2_5_vl_tiny": (32, 32)}

# Qwen/Qwen2.5-VL-7B-Instruct's config.json (text and vision) and preprocessor_config.json.
QWEN2_5_VL_7B_TEXT = {
    "vocab_size": 152064,
    "hidden_size": 3584,
    "intermediate_size": 18944,
    "num_hidden_layers": 28,
    "num_attention_heads": 28,
    "num_key_value_heads": 4,
    "hidden_act": "silu",
    "max_position_embeddings": 128000,
    "max_window_layers": 28,
    "rms_norm_eps": 1e-6,
    "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [16, 24, 24]},
    "sliding_window": 32768,
    "use_sliding_window": False,
    "tie_word_embeddings": False,
}
QWEN2_5_VL_7B_VISION = {
    "depth": 32,
    "hidden_size": 1280,
    "intermediate_size": 3420,
    "num_heads": 16,
    "out_hidden_size": 3584,
    "hidden_act": "silu",
    "in_channels": 3,
    "patch_size": 14,
    "spatial_merge_size": 2,
    "temporal_patch_size": 2,
    "window_size": 112,
    "fullatt_block_indexes": [7, 15, 23, 31],
    "tokens_per_second": 2,
}
QWEN2_5_VL_7B_PIXELS = {"min_pixels": 3136, "max_pixels": 12845056, "patch_size": 14, "merge_size": 2}


def build_model(
    shape: str,
    device: str,
    dtype: torch.dtype,
    with_block: bool,
    layers: int | None = None,
    tokenizer_path: str | None = None,
    width_divisor: int = 1,
):
    """(model, tokenizer, image processor). `layers`: the LLM's and the vision encoder's depth (None: the shape's).
    `tokenizer_path`: LLaVA-7B's Llama-2 tokenizer (default ../shared/data's when there). `width_divisor`
    (Qwen shapes): heads divided by it, widths with them, head sizes kept (so M-RoPE's sections still fit)."""
    if shape not in SHAPES:
        raise ValueError(f"unknown shape {shape!r}; known: {', '.join(SHAPES)}")
    folder = tempfile.mkdtemp(prefix="bench_model_")
    if shape.startswith("qwen"):
        config, tokenizer = qwen_config(shape, folder, layers, width_divisor)
        with torch.device(device):
            model = QWEN2_5_VL.model_class(QWEN2_5_VL.with_block(config))
        image_processor = load_qwen_processor(folder)
    else:
        if width_divisor != 1:
            raise ValueError("width_divisor is for the Qwen shapes")
        config, tokenizer = llava_config(shape, folder, layers, tokenizer_path)
        with torch.device(device):
            model = LlavaPostDecoderForConditionalGeneration(LlavaPostDecoderConfig.from_llava_config(config))
        image_processor = load_clip_processor(folder)
    if with_block:
        model.attach_post_decoder("post_interaction")
        with torch.no_grad():  # away from the identity, so the block does real work
            for parameter in model.post_decoder.parameters():
                parameter.normal_(0, 0.02)
    return model.to(dtype).eval(), tokenizer, image_processor


def picture_size(shape: str, model) -> tuple[int, int]:
    """(width, height) of the shape's bench pictures."""
    if shape in QWEN_PICTURES:
        return QWEN_PICTURES[shape]
    size = model.config.vision_config.image_size
    return size + 37, size  # not square: LLaVA's processor resizes and crops it, as it would a photo


def llava_config(shape: str, folder: str, layers: int | None, tokenizer_path: str | None):
    tokenizer_path = tokenizer_path or (LLAMA2_TOKENIZER if os.path.isdir(LLAMA2_TOKENIZER) else None)
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
    _write_json(
        os.path.join(folder, "preprocessor_config.json"), clip_preprocessor_config(config.vision_config.image_size)
    )
    return config, tokenizer


def qwen_config(shape: str, folder: str, layers: int | None, width_divisor: int):
    """The shape's Qwen2.5-VL config and tokenizer; its preprocessor_config.json written to `folder`."""
    tokenizer = train_tiny_qwen_tokenizer()
    pixels = preprocessor_config("qwen2_5_vl")
    if shape == "qwen2_5_vl_7b":
        values = qwen2_5_vl_7b_values(tokenizer)
        pixels.update(QWEN2_5_VL_7B_PIXELS)
    else:
        values = tiny_qwen2_5_vl_config(tokenizer).to_dict()
    text, vision = values["text_config"], values["vision_config"]
    text.pop("layer_types", None)  # derived from the depth, rebuilt by the config
    if layers:
        text["num_hidden_layers"] = text["max_window_layers"] = layers
        vision["depth"] = layers
        # One full-attention block when there is room (the last, as the shape's), the others windowed.
        vision["fullatt_block_indexes"] = [layers - 1] if layers > 1 else []
    if width_divisor != 1:
        narrow(text, vision, width_divisor)
    _write_json(os.path.join(folder, "preprocessor_config.json"), pixels)
    return Qwen2_5_VLConfig(**values), tokenizer


def qwen2_5_vl_7b_values(tokenizer) -> dict:
    """Qwen2.5-VL-7B-Instruct's config values; its special tokens' ids are `tokenizer`'s (Qwen's, another
    vocabulary)."""
    ids = special_token_ids(tokenizer)
    text = {
        **QWEN2_5_VL_7B_TEXT,
        "rope_parameters": dict(QWEN2_5_VL_7B_TEXT["rope_parameters"]),
        "bos_token_id": tokenizer.convert_tokens_to_ids("<|endoftext|>"),
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }
    vision = {**QWEN2_5_VL_7B_VISION, "fullatt_block_indexes": list(QWEN2_5_VL_7B_VISION["fullatt_block_indexes"])}
    return {"text_config": text, "vision_config": vision, "tie_word_embeddings": False, **ids}


def narrow(text: dict, vision: dict, divisor: int):
    """Heads (and so widths) divided by `divisor`, each head's size kept; MLPs shrink by the same factor."""
    head = text["hidden_size"] // text["num_attention_heads"]
    heads = max(1, text["num_attention_heads"] // divisor)
    kv_heads = max(1, text["num_key_value_heads"] // divisor)
    while heads % kv_heads:
        kv_heads -= 1
    text.update(num_attention_heads=heads, num_key_value_heads=kv_heads, hidden_size=head * heads)
    text["intermediate_size"] = max(1, text["intermediate_size"] // divisor)
    vision_head = vision["hidden_size"] // vision["num_heads"]
    vision["num_heads"] = max(1, vision["num_heads"] // divisor)
    vision["hidden_size"] = vision_head * vision["num_heads"]
    vision["intermediate_size"] = max(1, vision["intermediate_size"] // divisor)
    vision["out_hidden_size"] = text["hidden_size"]


def _write_json(path: str, content: dict):
    with open(path, "w") as handle:
        json.dump(content, handle)
