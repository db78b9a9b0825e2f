"""Qwen2-VL, Qwen2.5-VL and Qwen3-VL as backbone families: the answers `post_decoder.family.BackboneFamily`
asks for. One class, one instance per version (they differ in config and model classes, vision widths and the
default system message)."""

import torch

from ...configs_with_block import with_block_config
from ...errors import InputError
from ...family import BackboneFamily, KeyLayout
from . import conversation
from .configuration import qwen_vl_block_sizes
from .conversation import CONV_MODES
from .key_layouts import HUB, LAYOUTS, TRANSFORMERS


class QwenVLFamily(BackboneFamily):
    # LoRA on the LLM's linear layers, never on the vision encoder, merger or lm_head; --tune_mm_mlp_adapter
    # trains the patch merger (Qwen's "projector") beside them.
    lora_targets = r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"
    modules_trained_with_lora = ("model.visual.merger",)
    conv_modes = CONV_MODES
    prompt_module = conversation

    def __init__(self, name, config_class, plain_config_class, model_class, default_conv_mode):
        self.name = name
        self.config_class, self.plain_config_class, self.model_class = config_class, plain_config_class, model_class
        self.model_types = (config_class.model_type, plain_config_class.model_type)
        self.default_conv_mode = default_conv_mode

    def with_block(self, backbone_config, post_decoder_config=None):
        """Our config (this family's model type) of a plain or our Qwen-VL config, with the block's if given."""
        return with_block_config(self.config_class, backbone_config, post_decoder_config)

    def block_sizes(self, config, vision_source: str) -> dict[str, int]:
        return qwen_vl_block_sizes(config, vision_source)

    # --- positions: M-RoPE ---

    def position_ids(self, attention_mask, past_attention_mask=None):
        raise ValueError(
            f"{self.name}'s M-RoPE positions depend on the images: call prompt_position_ids for a prompt and "
            "continued_position_ids for tokens continuing it"
        )

    def prompt_position_ids(self, model, input_ids, attention_mask, image_inputs=None) -> torch.Tensor:
        grid = None if image_inputs is None else image_inputs.get("image_grid_thw")
        return model.prompt_position_ids(input_ids, attention_mask, grid)

    # --- images: dynamic resolution ---

    def image_inputs(self, images: list, image_processor) -> dict[str, torch.Tensor]:
        inputs = image_processor(images=images, return_tensors="pt")
        return {"pixel_values": inputs["pixel_values"], "image_grid_thw": inputs["image_grid_thw"]}

    def image_token_counts(self, config, image_inputs: dict) -> list[int]:
        merge = config.vision_config.spatial_merge_size
        return (image_inputs["image_grid_thw"].prod(-1) // (merge * merge)).tolist()

    def vision_grid(self, config, image_inputs, vision_source) -> list[tuple[int, int]]:
        """`projector`: each image's merged grid (h / m, w / m patches, m = `spatial_merge_size`), raster order.
        `vision_tower`: its patch grid (h, w), the rows in the processor's order, NOT raster: merged token by
        merged token (raster order), each one's m x m patches in raster order; patch (r, c) is row
        ((r // m) * (w // m) + c // m) * m * m + (r % m) * m + c % m (`vision_rows_in_raster` lists them)."""
        merge = config.vision_config.spatial_merge_size
        grids = []
        for _, height, width in image_inputs["image_grid_thw"].tolist():  # (frames: 1 for an image)
            grids.append((height // merge, width // merge) if vision_source == "projector" else (height, width))
        return grids

    def vision_rows_per_image(self, config, image_tokens: int, vision_source: str) -> int:
        """`vision_tower`: the patches before the merger, `spatial_merge_size**2` per image token."""
        if vision_source == "projector":
            return image_tokens
        return image_tokens * config.vision_config.spatial_merge_size**2

    def vision_rows_in_raster(self, config, image_inputs, vision_source) -> list[list[int] | None]:
        grids = self.vision_grid(config, image_inputs, vision_source)
        if vision_source == "projector":
            return [None] * len(grids)
        merge = config.vision_config.spatial_merge_size
        return [
            [
                ((row // merge) * (columns // merge) + column // merge) * merge * merge
                + (row % merge) * merge
                + column % merge
                for row in range(rows)
                for column in range(columns)
            ]
            for rows, columns in grids
        ]

    def image_token_count(self, config, image=None, image_processor=None) -> int:
        if image is None or image_processor is None:
            raise ValueError(
                f"{self.name}'s image-token count depends on the image's size and the processor's resize rule: "
                "pass both (or count from image_inputs with image_token_counts)"
            )
        patches = image_processor.get_number_of_image_patches(image.height, image.width)
        return patches // image_processor.merge_size**2

    # --- the prompt: the chat template ---

    # --- loading ---

    def load(self, model_path, raw_config, dtype, device_map=None, **image_options):
        from .loading import load_qwen_vl  # here: the loader pulls in the image processor

        return load_qwen_vl(self, model_path, raw_config, dtype, device_map, **image_options)

    # --- checkpoint files ---

    def key_layout(self, raw_config: dict, keys: list[str], where: str) -> KeyLayout:
        if any(key.startswith("model.language_model.") for key in keys):
            return LAYOUTS[TRANSFORMERS]
        if any(key.startswith("visual.") for key in keys) and any(key.startswith("model.") for key in keys):
            return LAYOUTS[HUB]
        raise InputError(f"{where} is not a {self.name} checkpoint: no model.language_model.* or visual.* keys")

    def backbone_config(self, raw_config: dict, folder: str):
        if raw_config.get("model_type") == self.config_class.model_type:
            return self.config_class.from_pretrained(folder)
        return self.plain_config_class.from_pretrained(folder)

    def config_with_block(self, raw_config: dict, block_values: dict) -> dict:
        """A plain folder becomes our model type, so that transformers and load_pretrained_model build the block."""
        return {
            **raw_config,
            "post_decoder_config": block_values,
            "model_type": self.config_class.model_type,
            "architectures": [self.model_class.__name__],
        }
