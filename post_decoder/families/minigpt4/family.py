"""MiniGPT-4 as a backbone family: the answers `post_decoder.family.BackboneFamily` asks for."""

from ...errors import InputError
from ...family import BackboneFamily, KeyLayout, patch_grid
from ..instructblip.configuration import blip_block_sizes  # the same rule: BLIP-2 vision, a Llama LM
from . import conversation
from .configuration import GROUPED_PATCHES, MiniGPT4Config
from .conversation import (
    CONV_MODES,
    DEFAULT_CONV_MODE,
    VICUNA_CONV_MODE,
)
from .modeling import MiniGPT4ForConditionalGeneration

# Converted folders are saved by transformers under our own names: one layout, nothing renamed.
MINIGPT4_LAYOUT = KeyLayout("MiniGPT-4 (transformers BLIP-2 names)")


class MiniGPT4Family(BackboneFamily):
    name = "MiniGPT-4"
    model_types = (MiniGPT4Config.model_type,)
    config_class = MiniGPT4Config
    model_class = MiniGPT4ForConditionalGeneration
    conv_modes = CONV_MODES
    prompt_module = conversation
    default_conv_mode = DEFAULT_CONV_MODE  # the Llama-2 version's, which HA-DPO trains
    head_key = "language_model.lm_head.weight"
    # LoRA on the LLM's linear layers only (the Q-Former's are named query/key/value, the ViT's qkv);
    # --tune_mm_mlp_adapter trains MiniGPT-4's llama_proj beside them.
    lora_targets = r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"
    modules_trained_with_lora = ("language_projection",)

    def block_sizes(self, config, vision_source: str) -> dict[str, int]:
        return blip_block_sizes(config, vision_source)

    # --- the prompt ---

    def default_conv_mode_for(self, config) -> str:
        """Each version's own template: the Vicuna version's (with a Q-Former) or the Llama-2 version's."""
        return VICUNA_CONV_MODE if config.has_qformer else self.default_conv_mode

    def image_token_count(self, config, image=None, image_processor=None) -> int:
        return config.image_seq_length  # every image is resized to one size: 32 queries, or 64 groups of patches

    def vision_rows_per_image(self, config, image_tokens: int, vision_source: str) -> int:
        """`vision_tower`: the ViT's CLS row and its patches (257 at 224 pixels); `projector`: the image tokens."""
        if vision_source == "projector":
            return image_tokens
        return (config.vision_config.image_size // config.vision_config.patch_size) ** 2 + 1

    def vision_grid(self, config, image_inputs, vision_source) -> list[tuple[int, int] | None]:
        """`vision_tower`: the ViT's patch grid (16 x 16 at 224 pixels) after its CLS row. `projector`: the Vicuna
        version's 32 query outputs have none (None); the Llama-2 version's image tokens are runs of four
        neighbouring patches in a row, a 16 x 4 grid."""
        images = len(image_inputs["pixel_values"])
        rows, columns = patch_grid(image_inputs["pixel_values"], config.vision_config.patch_size)
        if vision_source != "projector":
            return [(rows, columns)] * images
        return [None if config.has_qformer else (rows, columns // GROUPED_PATCHES)] * images

    # --- loading ---

    def load(self, model_path, raw_config, dtype, device_map=None, **image_options):
        if image_options:
            raise InputError(
                f"{', '.join('--' + name for name in image_options)}: MiniGPT-4 resizes every image to one size; "
                "leave the option out for this model"
            )
        from .loading import load_minigpt4

        return load_minigpt4(model_path, dtype, device_map)

    # --- checkpoint files ---

    def key_layout(self, raw_config: dict, keys: list[str], where: str) -> KeyLayout:
        if not any(key.startswith("language_model.") for key in keys):
            raise InputError(f"{where} is not a converted MiniGPT-4 checkpoint: no language_model.* keys")
        return MINIGPT4_LAYOUT

    def backbone_config(self, raw_config: dict, folder: str):
        return MiniGPT4Config.from_pretrained(folder)

    def config_with_block(self, raw_config: dict, block_values: dict) -> dict:
        return {**raw_config, "post_decoder_config": block_values}
