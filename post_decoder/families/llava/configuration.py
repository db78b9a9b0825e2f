"""LLaVA's config with an optional block, and the sizes a block on LLaVA takes."""

from transformers import LlavaConfig

from ...block import PostDecoderConfig
from ...configs_with_block import config_class_with_block, with_block_config


class LlavaPostDecoderConfig(config_class_with_block(LlavaConfig)):
    """`LlavaConfig` plus an optional `post_decoder_config` (None: a plain LLaVA)."""

    model_type = "llava_post_decoder"

    @classmethod
    def from_llava_config(
        cls, llava_config: LlavaConfig, post_decoder_config: PostDecoderConfig | None = None
    ) -> "LlavaPostDecoderConfig":
        return with_block_config(cls, llava_config, post_decoder_config)


def is_original_llava_config(config: dict) -> bool:
    """Whether a config.json is an original LLaVA-1.5 checkpoint's (`liuhaotian/llava-v1.5-7b`), not llava-hf's."""
    return "LlavaLlamaForCausalLM" in (config.get("architectures") or []) or "mm_vision_tower" in config


def llava_block_sizes(llava_config: LlavaConfig, vision_source: str) -> dict[str, int]:
    """The block's sizes on LLaVA: the LLM's width, heads and MLP width; the vision features' width is the
    tower's selected layer(s) (`vision_tower`) or the projector's output, the LLM's width (`projector`)."""
    text = llava_config.text_config
    if vision_source == "projector":
        vision_hidden = text.hidden_size
    else:
        layers = llava_config.vision_feature_layer
        vision_hidden = llava_config.vision_config.hidden_size * (1 if isinstance(layers, int) else len(layers))
    return {
        "hidden_size": text.hidden_size,
        "vision_hidden_size": vision_hidden,
        "num_attention_heads": text.num_attention_heads,
        "intermediate_size": text.intermediate_size,
    }
