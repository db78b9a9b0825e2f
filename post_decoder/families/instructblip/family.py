"""InstructBLIP (Vicuna) as a backbone family: the answers `post_decoder.family.BackboneFamily` asks for."""

from transformers import InstructBlipConfig

from ...errors import InputError
from ...family import BackboneFamily, KeyLayout, patch_grid
from . import conversation
from .configuration import InstructBlipPostDecoderConfig, blip_block_sizes
from .conversation import CONV_MODES, DEFAULT_CONV_MODE
from .modeling import InstructBlipPostDecoderForConditionalGeneration

# transformers' own names (the hub's `Salesforce/instructblip-vicuna-*` folders and ours): nothing to rename.
TRANSFORMERS_LAYOUT = KeyLayout("InstructBLIP (transformers)")
QFORMER_MAX_LENGTH = 128  # LAVIS's `max_txt_len`: the Q-Former reads at most the question's last 128 tokens


class InstructBlipFamily(BackboneFamily):
    name = "InstructBLIP"
    model_types = (InstructBlipPostDecoderConfig.model_type, "instructblip")
    config_class = InstructBlipPostDecoderConfig
    model_class = InstructBlipPostDecoderForConditionalGeneration
    conv_modes = CONV_MODES
    prompt_module = conversation
    default_conv_mode = DEFAULT_CONV_MODE
    head_key = "language_model.lm_head.weight"
    model_folders = ("qformer_tokenizer",)  # loading.QFORMER_TOKENIZER_FOLDER: the Q-Former's tokenizer
    # LoRA on the LLM's linear layers only, never the vision encoder, the Q-Former or lm_head; the projection
    # into the LLM (LAVIS's `llm_proj`) trains beside them when asked, as LLaVA's projector does.
    lora_targets = r".*language_model\.model\.layers\..*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"
    modules_trained_with_lora = ("language_projection",)

    def block_sizes(self, config, vision_source: str) -> dict[str, int]:
        return blip_block_sizes(config, vision_source)

    # --- the prompt: the question itself, after the image's query tokens ---

    def image_token_id(self, config) -> int:
        if config.image_token_id is None:
            raise InputError(
                "this InstructBLIP config.json has no image_token_index (a checkpoint from before transformers "
                "marked image positions): fetch the checkpoint again from the hub"
            )
        return config.image_token_id

    def image_token_count(self, config, image=None, image_processor=None) -> int:
        return config.num_query_tokens  # the Q-Former's query outputs: the same for every image

    def vision_rows_per_image(self, config, image_tokens: int, vision_source: str) -> int:
        """`vision_tower`: the ViT's CLS row and its patches (257 at 224 pixels); `projector`: the image tokens."""
        if vision_source == "projector":
            return image_tokens
        return (config.vision_config.image_size // config.vision_config.patch_size) ** 2 + 1

    def vision_grid(self, config, image_inputs, vision_source) -> list[tuple[int, int] | None]:
        """`vision_tower`: the ViT's patch grid (16 x 16 at 224 pixels) after its CLS row; `projector`: None (the
        query outputs have no place on the image)."""
        images = len(image_inputs["pixel_values"])
        if vision_source == "projector":
            return [None] * images
        return [patch_grid(image_inputs["pixel_values"], config.vision_config.patch_size)] * images

    # `image_inputs` (`pixel_values` [I, 3, H, W]: the processor resizes every image to one square),
    # `image_token_counts` (every image `num_query_tokens`) and the 1-D positions are the interface's defaults.

    prompt_prefix_is_shared = False  # the image's query outputs depend on the question

    def prompt_inputs(self, texts: list[str], processor) -> dict:
        """The Q-Former's own tokens of each sample's prompt text (`qformer_input_ids`, `qformer_attention_mask`,
        right-padded): InstructBLIP's Q-Former reads the instruction, one row per image."""
        encoded = processor.qformer_tokenizer(
            texts, padding="longest", truncation=True, max_length=QFORMER_MAX_LENGTH, return_tensors="pt"
        )
        return {"qformer_input_ids": encoded.input_ids, "qformer_attention_mask": encoded.attention_mask}

    def encoded_image_inputs(self, model, image_inputs: dict) -> dict:
        """The vision encoder's output (EVA ViT-g: the larger part of the work before the language model)."""
        return {"image_embeds": model.encode_images(image_inputs["pixel_values"])}

    # --- loading ---

    def load(self, model_path, raw_config, dtype, device_map=None, **image_options):
        if image_options:
            raise InputError(
                f"{', '.join('--' + name for name in image_options)}: InstructBLIP resizes every image to one size; "
                "leave the option out for this model"
            )
        from .loading import load_instructblip  # here: loading pulls in the tokenizers and the processor

        return load_instructblip(model_path, raw_config, dtype, device_map)

    # --- checkpoint files ---

    def key_layout(self, raw_config: dict, keys: list[str], where: str) -> KeyLayout:
        if any(key.startswith("language_model.model.") for key in keys):
            return TRANSFORMERS_LAYOUT
        raise InputError(f"{where} is not an InstructBLIP checkpoint: no language_model.model.* keys")

    def backbone_config(self, raw_config: dict, folder: str):
        if raw_config.get("model_type") == InstructBlipPostDecoderConfig.model_type:
            return InstructBlipPostDecoderConfig.from_pretrained(folder)
        return InstructBlipConfig.from_pretrained(folder)

    def config_with_block(self, raw_config: dict, block_values: dict) -> dict:
        """The folder becomes our model type, so that transformers and load_pretrained_model build the block."""
        return {
            **raw_config,
            "post_decoder_config": block_values,
            "model_type": InstructBlipPostDecoderConfig.model_type,
            "architectures": [InstructBlipPostDecoderForConditionalGeneration.__name__],
        }
