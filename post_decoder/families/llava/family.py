"""LLaVA-1.5 as a backbone family: the answers `post_decoder.family.BackboneFamily` asks for."""

from transformers import LlavaConfig

from ...errors import InputError
from ...family import BackboneFamily, KeyLayout, patch_grid
from . import conversation
from .configuration import LlavaPostDecoderConfig, is_original_llava_config, llava_block_sizes
from .conversation import CONV_MODES, DEFAULT_CONV_MODE
from .key_layouts import LAYOUTS, LLAVA_HF, LLAVA_HF_HUB, ORIGINAL
from .modeling import LlavaPostDecoderForConditionalGeneration


class LlavaFamily(BackboneFamily):
    name = "LLaVA-1.5"
    model_types = (LlavaPostDecoderConfig.model_type, "llava")
    config_class = LlavaPostDecoderConfig
    model_class = LlavaPostDecoderForConditionalGeneration
    conv_modes = CONV_MODES
    prompt_module = conversation
    default_conv_mode = DEFAULT_CONV_MODE
    # LoRA on the LLM's linear layers, never on the vision tower, projector or lm_head (as HA-DPO/LLaVA);
    # --tune_mm_mlp_adapter trains the projector beside them.
    lora_targets = r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"
    modules_trained_with_lora = ("model.multi_modal_projector",)

    def checkpoint_flag_values(self, config) -> dict:
        vision = config.vision_config
        return {
            "mm_vision_select_layer": config.vision_feature_layer,
            "vision_tower_shape": (vision.patch_size, vision.image_size),
        }

    def block_sizes(self, config, vision_source: str) -> dict[str, int]:
        return llava_block_sizes(config, vision_source)

    # --- the prompt (`prompt_module`): vicuna_v1 (or llava_v1), each <image> the same number of tokens ---

    def image_token_count(self, config, image=None, image_processor=None) -> int:
        return config.image_seq_length  # CLIP's patches: the same for every image (it is padded and resized)

    def vision_grid(self, config, image_inputs, vision_source) -> list[tuple[int, int]]:
        """The tower's patch grid (24 x 24 at 336 pixels), for either source: the projector maps each patch alone.
        Under the `full` strategy the CLS row comes first."""
        grid = patch_grid(image_inputs["pixel_values"], config.vision_config.patch_size)
        return [grid] * len(image_inputs["pixel_values"])

    # `image_inputs` (`pixel_values` [I, 3, H, W], the `pad` preprocessing), `image_token_counts` (every image
    # `image_seq_length`) and the 1-D positions (`prompt_position_ids`, `continued_position_ids`) are the
    # interface's defaults, which are LLaVA's answers.

    # --- loading ---

    def claims(self, raw_config: dict) -> bool:
        return is_original_llava_config(raw_config) or super().claims(raw_config)

    def load(self, model_path, raw_config, dtype, device_map=None, **image_options):
        if image_options:
            raise InputError(
                f"{', '.join('--' + name for name in image_options)}: LLaVA-1.5 resizes every image to one size; "
                "leave the option out for this model"
            )
        from .loading import load_llava  # here: the loaders pull in the tokenizer and the conversion code

        return load_llava(model_path, raw_config, dtype, device_map)

    # --- checkpoint files ---

    def key_layout(self, raw_config: dict, keys: list[str], where: str) -> KeyLayout:
        if is_original_llava_config(raw_config):
            return LAYOUTS[ORIGINAL]
        if any(key.startswith("language_model.") for key in keys):
            return LAYOUTS[LLAVA_HF_HUB]
        if any(key.startswith("model.language_model.") for key in keys):
            return LAYOUTS[LLAVA_HF]
        raise InputError(f"{where} is not a LLaVA-1.5 checkpoint: no language_model.* or model.language_model.* keys")

    def backbone_config(self, raw_config: dict, folder: str):
        if is_original_llava_config(raw_config):
            from .original import llava_config_from_original

            return llava_config_from_original(raw_config)
        if raw_config.get("model_type") == LlavaPostDecoderConfig.model_type:
            return LlavaPostDecoderConfig.from_pretrained(folder)
        return LlavaConfig.from_pretrained(folder)

    def config_with_block(self, raw_config: dict, block_values: dict) -> dict:
        """llava-hf folders become our model type, so that transformers and load_pretrained_model build the
        block; original folders keep theirs (their loader reads `post_decoder_config` itself)."""
        config = {**raw_config, "post_decoder_config": block_values}
        if not is_original_llava_config(raw_config):
            config["model_type"] = LlavaPostDecoderConfig.model_type
            config["architectures"] = [LlavaPostDecoderForConditionalGeneration.__name__]
        return config
