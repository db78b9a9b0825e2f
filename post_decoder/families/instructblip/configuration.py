"""InstructBLIP's config with an optional block, and the sizes a block on InstructBLIP takes."""

from transformers import InstructBlipConfig

from ...block import PostDecoderConfig
from ...configs_with_block import config_class_with_block, with_block_config


class InstructBlipPostDecoderConfig(config_class_with_block(InstructBlipConfig)):
    """`InstructBlipConfig` plus an optional `post_decoder_config` (None: a plain InstructBLIP)."""

    model_type = "instructblip_post_decoder"

    @classmethod
    def from_instructblip_config(
        cls, config: InstructBlipConfig, post_decoder_config: PostDecoderConfig | None = None
    ) -> "InstructBlipPostDecoderConfig":
        return with_block_config(cls, config, post_decoder_config)


def blip_block_sizes(config, vision_source: str) -> dict[str, int]:
    """The block's sizes on a BLIP-style model (InstructBLIP, MiniGPT-4): the LLM's width, heads and MLP width; the
    vision features' width is the vision encoder's (`vision_tower`: its output after the final layer norm, 1408 on
    EVA ViT-g) or the LLM's (`projector`: the image tokens after `language_projection`)."""
    text = config.text_config
    vision_hidden = text.hidden_size if vision_source == "projector" else config.vision_config.hidden_size
    return {
        "hidden_size": text.hidden_size,
        "vision_hidden_size": vision_hidden,
        "num_attention_heads": text.num_attention_heads,
        "intermediate_size": text.intermediate_size,
    }
