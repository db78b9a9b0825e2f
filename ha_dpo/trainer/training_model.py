"""Load the checkpoint, choose what is trained, and wrap it for the trainer.

Modes (HA-DPO's flags): stage 1 `--tune_post_decoder`; stage 2 `--tune_post_decoder --tune_lm_head`;
head only `--tune_lm_head`; the LoRA baseline `--lora_enable` (with `--tune_mm_mlp_adapter` for the
projector). Everything else is frozen.
"""

import torch

from post_decoder import PostDecoderConfig
from post_decoder.builder import load_pretrained_model
from post_decoder.errors import InputError
from post_decoder.family import family_for

from ..cli.arguments import tower_shape_named
from ..objective.preference_model import LoraPreferenceModel, SharedBackbonePreferenceModel


def training_dtype(training_args) -> torch.dtype:
    return torch.bfloat16 if training_args.bf16 else torch.float16 if training_args.fp16 else torch.float32


def load_for_training(model_args, training_args):
    """Returns (tokenizer, model, image_processor) with a block attached when a new one is trained."""
    # Only when set: a family whose processor takes none refuses them.
    image_options = {name: getattr(model_args, name) for name in ("min_pixels", "max_pixels")}
    image_options = {name: value for name, value in image_options.items() if value is not None}
    tokenizer, model, image_processor, _ = load_pretrained_model(
        model_args.model_name_or_path, device="cpu", dtype=training_dtype(training_args), **image_options
    )
    _check_matches_checkpoint(model_args, model)
    if model_args.tune_post_decoder:
        variant = model_args.post_decoder_variant
        if model.post_decoder is None:
            model.attach_post_decoder(
                PostDecoderConfig(variant=variant or "post_interaction", num_layers=model_args.post_decoder_num_layers)
            )
        elif variant is not None and variant != model.post_decoder.config.variant:
            raise InputError(
                f"{model_args.model_name_or_path} already holds a {model.post_decoder.config.variant} block; "
                f"--post_decoder_variant {variant} would replace it: drop the flag to train the block it has"
            )
    return tokenizer, model, image_processor


def preference_model(model_args, model, tokenizer):
    """Freeze all but the trained part and wrap policy + reference for the trainer."""
    if model_args.lora_enable:
        model.requires_grad_(False)
        return LoraPreferenceModel(_with_lora(model_args, model), tokenizer.pad_token_id)
    train_block_and_head_only(model_args, model)
    return SharedBackbonePreferenceModel(model, tune_lm_head=model_args.tune_lm_head)


def train_block_and_head_only(model_args, model):
    """Everything frozen but the block (`--tune_post_decoder`) and/or `lm_head` (`--tune_lm_head`)."""
    model.requires_grad_(False)
    trained = []
    if model_args.tune_post_decoder:
        trained.append(model.post_decoder)
    if model_args.tune_lm_head:
        trained.append(model.lm_head)
    for module in trained:
        # fp32 master weights for the trained part; the frozen backbone stays in the run's dtype.
        module.to(torch.float32).requires_grad_(True)


def _with_lora(model_args, model):
    from peft import LoraConfig, get_peft_model

    family = family_for(model)
    config = LoraConfig(
        r=model_args.lora_r,
        lora_alpha=model_args.lora_alpha,
        lora_dropout=model_args.lora_dropout,
        bias=model_args.lora_bias,
        target_modules=family.lora_targets,
    )
    peft_model = get_peft_model(model, config)
    if model_args.tune_mm_mlp_adapter:
        for name in family.modules_trained_with_lora:
            peft_model.get_base_model().get_submodule(name).requires_grad_(True)
    return peft_model


def conv_mode_for(model, conv_mode: str | None) -> str:
    """The run's template: `--conv_mode` if the model's family has it, else the one the model answers in by
    default (what POPE and the demo send it)."""
    family = family_for(model)
    default = family.default_conv_mode_for(model.config)
    if conv_mode is None:
        return default
    if conv_mode not in family.conv_modes:
        raise InputError(
            f"--conv_mode {conv_mode} is not a template of {family.name} models: choose one of "
            f"{', '.join(family.conv_modes)}, or drop the flag for {default}"
        )
    return conv_mode


def _check_matches_checkpoint(model_args, model):
    """HA-DPO's model flags describe the checkpoint; a disagreement is a mistake, not a request. They are
    LLaVA-1.5's settings (`family.checkpoint_flag_values`): a checkpoint without them refuses the flags."""
    family = family_for(model)
    values, name, path = family.checkpoint_flag_values(model.config), family.name, model_args.model_name_or_path
    layer = model_args.mm_vision_select_layer
    if layer is not None and "mm_vision_select_layer" not in values:
        raise InputError(
            f"--mm_vision_select_layer {layer}: {path} is a {name} model, which has no such setting (a LLaVA-1.5 "
            "flag): drop the flag"
        )
    if layer is not None and layer != values["mm_vision_select_layer"]:
        raise InputError(f"--mm_vision_select_layer {layer}, but {path} uses layer {values['mm_vision_select_layer']}")
    if model_args.vision_tower is not None:  # the checkpoint's own tower is used; the flag is checked against it
        shape = values.get("vision_tower_shape")
        if shape is None:
            raise InputError(
                f"--vision_tower {model_args.vision_tower}: {path} is a {name} model, whose vision encoder is its own "
                "(the flag names a CLIP tower of one image size, as LLaVA-1.5's; not an encoder that takes images of "
                "any size or of its own): drop the flag"
            )
        if tower_shape_named(model_args.vision_tower) != shape:
            raise InputError(
                f"--vision_tower {model_args.vision_tower}, but {path}'s tower has patch "
                f"{shape[0]} and image size {shape[1]}; the tower is always the checkpoint's own: drop the flag"
            )
