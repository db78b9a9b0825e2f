"""Original LLaVA-1.5 checkpoints (`liuhaotian/llava-v1.5-7b` layout) converted in memory.

Such a folder holds `LlavaLlamaForCausalLM` weights (`model.layers.*`, `model.mm_projector.{0,2}`,
`lm_head`), a 32000-token vocabulary without an image token, and names its CLIP tower by path or
hub id in `mm_vision_tower`. We convert as transformers' official conversion script
(models/llava/convert_llava_weights_to_hf.py) does: add `<image>` and `<pad>` after the vocabulary
(`image_token_index` and the top-level `pad_token_id`; `text_config.pad_token_id` stays the Llama
config's), resize the embeddings and `lm_head` to a multiple of 64 rows, and draw every new row of
both from N(mean, 1e-5 * covariance) of the *embedding* rows. Our draw is seeded (`embedding_rows.CONVERSION_SEED`),
so a conversion is reproducible; the official script draws from the global generator, unseeded.
A `post_decoder_config` in config.json (written by scripts/replace_bin.py) means the weights hold a
block (`post_decoder.*`): it is built before the strict load, so it loads with the rest.

    python -m post_decoder.families.llava.original --model-path liuhaotian/llava-v1.5-7b --out llava-v1.5-7b-converted
"""

import argparse
import json
import os
import re

import torch
from accelerate import init_empty_weights
from transformers import CLIPVisionConfig, CLIPVisionModel, LlamaConfig, LlavaConfig
from transformers.utils import cached_file

from ...block import PostDecoderConfig
from ...embedding_rows import add_image_and_pad_rows
from ...errors import InputError, run_command
from ...llama_tokenizer import load_tokenizer
from ...saving import check_new_folder, listing, load_sharded_state_dict, load_state_strictly
from .configuration import LlavaPostDecoderConfig, is_original_llava_config
from .conversation import add_llava_tokens
from .image_processing import load_image_processor
from .key_layouts import LAYOUTS, ORIGINAL

# Keys of an original config.json that describe LLaVA's multimodal parts, not the Llama LLM.
_LLAVA_ONLY_KEYS = {
    "architectures",
    "model_type",
    "image_aspect_ratio",
    "image_grid_pinpoints",
    "tune_mm_mlp_adapter",
    "freeze_mm_mlp_adapter",
    "use_mm_proj",
    "tokenizer_model_max_length",
    "tokenizer_padding_side",
    "unfreeze_mm_vision_tower",
    "_name_or_path",
    "transformers_version",
    "torch_dtype",
    "mm_vision_tower",
    "post_decoder_config",
}
_HUB_ID = re.compile(r"^[\w.-]+(/[\w.-]+)?$")


def llava_config_from_original(config: dict) -> LlavaConfig:
    """The llava-hf config of an original checkpoint; unsupported LLaVA options fail loudly."""
    _require(config, "mm_projector_type", ("mlp2x_gelu",))
    _require(config, "mm_patch_merge_type", ("flat",))
    _require(config, "image_aspect_ratio", ("pad", "square", None))
    if config.get("mm_use_im_start_end"):
        raise InputError("original LLaVA checkpoints with mm_use_im_start_end=True are not supported")
    strategy = {"patch": "default", "cls_patch": "full"}.get(config.get("mm_vision_select_feature", "patch"))
    if strategy is None:
        raise InputError(f"unsupported mm_vision_select_feature {config['mm_vision_select_feature']!r}")
    text_vocab = config["vocab_size"]
    text_values = {
        key: value for key, value in config.items() if key not in _LLAVA_ONLY_KEYS and not key.startswith("mm_")
    }
    text_config = LlamaConfig(**text_values)
    vision_config = CLIPVisionConfig.from_pretrained(config["mm_vision_tower"])
    return LlavaConfig(
        vision_config=vision_config,
        text_config=text_config,
        image_token_index=text_vocab,
        image_seq_length=(vision_config.image_size // vision_config.patch_size) ** 2,
        vision_feature_layer=config.get("mm_vision_select_layer", -2),
        vision_feature_select_strategy=strategy,
        projector_hidden_act="gelu",
        pad_token_id=text_vocab + 1,
    )


def _require(config: dict, key: str, allowed: tuple):
    if config.get(key, allowed[0]) not in allowed:
        raise InputError(f"original LLaVA checkpoint has {key}={config[key]!r}; supported: {allowed}")


def read_original_config(model_path: str) -> dict:
    """config.json of an original LLaVA-1.5 folder or hub id; anything else is an InputError saying what it is."""
    if os.path.isdir(model_path):
        path = os.path.join(model_path, "config.json")
        if not os.path.isfile(path):
            raise InputError(f"--model-path {model_path} has no config.json: name the checkpoint's folder")
    elif os.path.exists(model_path):
        raise InputError(f"--model-path {model_path} is a file: name the checkpoint's folder")
    else:
        path = _hub_config(model_path)
    with open(path) as handle:
        config = json.load(handle)
    if is_original_llava_config(config):
        return config
    model_type = config.get("model_type")
    if model_type in ("llava", LlavaPostDecoderConfig.model_type):
        raise InputError(
            f"--model-path {model_path} is already in the llava-hf format "
            f"(config.json has model_type {model_type!r}): "
            "load it directly (as --model-path of the other commands, or with from_pretrained); nothing to convert"
        )
    raise InputError(
        f"--model-path {model_path} is not an original LLaVA-1.5 checkpoint: its config.json has model_type "
        f"{model_type!r} and no mm_vision_tower"
    )


def _hub_config(model_path: str) -> str:
    missing = f"--model-path {model_path}: no such folder (a hub id such as liuhaotian/llava-v1.5-7b needs internet)"
    if not _HUB_ID.match(model_path):
        raise InputError(missing)
    try:
        return cached_file(model_path, "config.json")
    except (OSError, ValueError):  # not reachable, or no such repository
        raise InputError(missing) from None


def load_original_llava(model_path: str, model_class, dtype: torch.dtype = torch.float32):
    """Convert an original LLaVA-1.5 folder or hub id. Returns (model, tokenizer, image_processor)
    with `model` an instance of `model_class` (a `LlavaForConditionalGeneration` subclass) on the CPU."""
    original = read_original_config(model_path)
    llava_config = llava_config_from_original(original)
    block_values = original.get("post_decoder_config")
    block_config = PostDecoderConfig.from_dict(block_values) if block_values else None
    config = LlavaPostDecoderConfig.from_llava_config(llava_config, block_config)
    text_vocab = original["vocab_size"]
    config.text_config.vocab_size = text_vocab  # resized below, after the weights are in

    state = {
        LAYOUTS[ORIGINAL].to_ours(name): tensor
        for name, tensor in load_sharded_state_dict(model_path).items()
        if not name.endswith("rotary_emb.inv_freq")  # a buffer that old Llama code saved; recomputed at init
    }
    if not any(name.startswith("model.vision_tower.") for name in state):
        tower, info = CLIPVisionModel.from_pretrained(
            original["mm_vision_tower"], dtype=dtype, output_loading_info=True
        )
        if info["missing_keys"] or info["mismatched_keys"]:
            raise InputError(
                f"vision tower {original['mm_vision_tower']} (mm_vision_tower of {model_path}) is incomplete:\n"
                + listing("missing", sorted(info["missing_keys"]))
                + listing("mis-shaped", sorted(map(str, info["mismatched_keys"])))
            )
        state.update({"model.vision_tower." + name: tensor for name, tensor in tower.state_dict().items()})

    with init_empty_weights(include_buffers=False):
        model = model_class(config)
    state = {name: tensor.to(dtype) for name, tensor in state.items()}
    load_state_strictly(model, state, f"weights of the original LLaVA checkpoint {model_path}", assign=True)
    model.tie_weights()

    tokenizer = load_tokenizer(model_path)
    if len(tokenizer) != text_vocab:
        raise InputError(f"tokenizer of {model_path} has {len(tokenizer)} tokens, its config.json says {text_vocab}")
    add_llava_tokens(tokenizer)
    add_image_and_pad_rows(model, text_vocab)
    model.config.pad_token_id = text_vocab + 1
    return model.eval(), tokenizer, load_image_processor(original["mm_vision_tower"])


def main(argv=None):
    # The name its errors have always carried (the command was post_decoder.original_llava before the families).
    return run_command(_convert, argv, "post_decoder.original_llava")


def _convert(argv):
    parser = argparse.ArgumentParser(description="Convert an original LLaVA-1.5 checkpoint to the llava-hf layout.")
    parser.add_argument("--model-path", required=True, help="original LLaVA-1.5 folder or hub id")
    parser.add_argument("--out", required=True, help="new folder for the converted checkpoint")
    parser.add_argument("--dtype", default="float16", choices=("float16", "bfloat16", "float32"))
    args = parser.parse_args(argv)
    check_new_folder(args.out, "--out", empty_is_new=True)
    read_original_config(args.model_path)  # before the long part: say now if it is not one to convert
    from ...saving import save_model_folder
    from .modeling import LlavaPostDecoderForConditionalGeneration

    model, tokenizer, image_processor = load_original_llava(
        args.model_path, LlavaPostDecoderForConditionalGeneration, getattr(torch, args.dtype)
    )
    save_model_folder(model, tokenizer, image_processor, args.out)
    print(f"converted {args.model_path} -> {args.out}")


if __name__ == "__main__":
    main()
