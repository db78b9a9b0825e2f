"""`load_pretrained_model`: open a checkpoint of any registered family, with or without a post-decoder block,
the way LLaVA's `llava.model.builder` does, returning `(tokenizer, model, image_processor, context_len)`.

The family is the one that claims the checkpoint's config.json (`post_decoder.family`). For LLaVA-1.5,
accepted `model_path`s (local folders or hub ids, e.g. `llava-hf/llava-1.5-7b-hf`):
  - llava-hf folders (`LlavaForConditionalGeneration`, either key layout);
  - original LLaVA-1.5 folders (`LlavaLlamaForCausalLM`, `liuhaotian/llava-v1.5-7b`), converted in memory,
    with their block when scripts/replace_bin.py added one (`post_decoder_config` in config.json);
  - our saved folders (base + block, `model_type: llava_post_decoder`);
  - a folder holding only a block (`post_decoder_config.json` + `post_decoder.safetensors`),
    with the base it was trained on as `model_base` (`--model-base` on the command line).

For Qwen2.5-VL, Qwen2-VL and Qwen3-VL: folders in the hub's layout (`Qwen/Qwen2.5-VL-7B-Instruct`: config.json,
safetensors shards, preprocessor_config.json, tokenizer files, chat_template), our saved folders (model types
`qwen2_5_vl_post_decoder`, ...) and a block alone with its base; `min_pixels` / `max_pixels` reach the image processor.

LLaVA's tokenizer comes from `llama_tokenizer.load_tokenizer`: LLaVA's own (slow, SentencePiece) token ids
whenever the folder ships `tokenizer.model`. A problem with the folders named is an `InputError` that names them.
"""

import json

import torch
from transformers.utils import cached_file

from .block import PostDecoderConfig
from .block.files import (
    POST_DECODER_CONFIG,
    is_post_decoder_folder,
    load_post_decoder_weights,
    read_post_decoder_config,
)
from .dtypes import default_dtype
from .errors import InputError
from .family import family_for_checkpoint
from .saving import listing

DEFAULT_CONTEXT_LENGTH = 2048  # LLaVA's builder returns this when the config names no max_sequence_length


def load_pretrained_model(
    model_path: str,
    model_base: str | None = None,
    model_name: str | None = None,
    load_8bit: bool = False,
    load_4bit: bool = False,
    device_map=None,
    device: str | None = None,
    dtype: torch.dtype | None = None,
    post_decoder: str | PostDecoderConfig | None = None,
    min_pixels: int | None = None,
    max_pixels: int | None = None,
):
    """Returns `(tokenizer, model, image_processor, context_len)`. The image processor is the family's: LLaVA-1.5's
    `pad` CLIP processor; for Qwen-VL the image processor alone (`Qwen2VLImageProcessorPil`, read from the folder's
    preprocessor_config.json), not the full `AutoProcessor` (the prompt is the family's, `post_decoder.family`).

    post_decoder: a variant name or a `PostDecoderConfig` attaches a new block at its identity
        initialisation; `None` keeps whatever the checkpoint holds (no block for a plain LLaVA).
    model_name: accepted for LLaVA compatibility; the format is read from the files, not the name.
    dtype: defaults to float16 on CUDA and float32 on the CPU, as LLaVA's builder.
    min_pixels, max_pixels: the image processor's resize bounds (Qwen-VL's; None: the folder's own). A family
        with one image size refuses them.
    """
    if load_8bit or load_4bit:
        raise NotImplementedError("8-bit and 4-bit loading are not supported yet; load in float16 or bfloat16")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = dtype or default_dtype(device)

    # Refuse conflicting requests before any weights are read.
    if is_post_decoder_folder(model_path):
        if model_base is None:
            raise InputError(
                f"{model_path} holds only a post-decoder block ({POST_DECODER_CONFIG}, no config.json): pass the base "
                "it was trained on as model_base= (--model-base on the command line)"
            )
        if _read_config(model_base).get("post_decoder_config") is not None:
            raise InputError(
                f"model_base {model_base} already holds a block (post_decoder_config in its config.json); the base "
                f"for the block in {model_path} must not: pass the plain model it was trained on"
            )
        block_config = read_post_decoder_config(model_path)
        full_path = model_base
    else:
        if model_base is not None:
            raise InputError(
                f"model_base is for a folder that holds only a block, and {model_path} is a full checkpoint "
                "(it has a config.json): leave model_base= (--model-base on the command line) out"
            )
        block_config = None
        full_path = model_path
    raw_config = _read_config(full_path)
    if post_decoder is not None and (block_config is not None or raw_config.get("post_decoder_config")):
        raise InputError(
            f"{model_path} already holds a block; pass post_decoder=None to keep it, or name a folder without one"
        )

    family = family_for_checkpoint(raw_config, full_path)
    image_options = {
        name: value for name, value in (("min_pixels", min_pixels), ("max_pixels", max_pixels)) if value is not None
    }
    tokenizer, model, image_processor = family.load(full_path, raw_config, dtype, device_map, **image_options)
    if block_config is not None:
        model.attach_post_decoder(block_config)
        load_post_decoder_weights(model.post_decoder, model_path)
    if post_decoder is not None:
        model.attach_post_decoder(post_decoder)
    model.to(dtype=dtype)
    if getattr(model, "hf_device_map", None) is None:  # device_map placed it already
        model.to(device)
    context_len = getattr(model.config, "max_sequence_length", None) or DEFAULT_CONTEXT_LENGTH
    return tokenizer, model.eval(), image_processor, context_len


def from_pretrained_strictly(model_class, model_path: str, config, dtype: torch.dtype, device_map=None):
    """`model_class.from_pretrained` that refuses weights which do not fit the config (none missing, none left
    over, none mis-shaped), naming the folder: what a family's `load` calls."""
    model, info = model_class.from_pretrained(
        model_path, config=config, dtype=dtype, device_map=device_map, output_loading_info=True
    )
    missing, unexpected = sorted(info["missing_keys"]), sorted(info["unexpected_keys"])
    if missing or unexpected or info["mismatched_keys"]:
        raise InputError(
            f"weights in {model_path} do not fit its config.json: fetch or copy the checkpoint again\n"
            + listing("missing", missing)
            + listing("unexpected", unexpected)
            + listing("mis-shaped", sorted(map(str, info["mismatched_keys"])))
        )
    return model


def _read_config(model_path: str) -> dict:
    try:
        path = cached_file(model_path, "config.json")
    except (OSError, ValueError):  # no such folder, no config.json in it, or a hub id out of reach
        raise InputError(
            f"{model_path} has no config.json: name a model's checkpoint folder (LLaVA-1.5, Qwen-VL, ...; "
            "or a hub id, with internet)"
        ) from None
    try:
        with open(path) as handle:
            return json.load(handle)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise InputError(f"{path} is not valid JSON ({error}): fetch or copy the checkpoint again") from None
