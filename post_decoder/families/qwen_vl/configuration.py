"""Qwen2-VL, Qwen2.5-VL and Qwen3-VL configs with an optional block, and the sizes a block on them takes."""

from transformers import Qwen2_5_VLConfig, Qwen2VLConfig, Qwen3VLConfig

from ...configs_with_block import config_class_with_block


def _with_block(base: type, model_type: str) -> type:
    """`base` plus an optional `post_decoder_config`, under its own `model_type`, named after it."""
    return config_class_with_block(
        base, model_type, base.__name__.removesuffix("Config") + "PostDecoderConfig", __name__
    )


Qwen2VLPostDecoderConfig = _with_block(Qwen2VLConfig, "qwen2_vl_post_decoder")
Qwen2_5_VLPostDecoderConfig = _with_block(Qwen2_5_VLConfig, "qwen2_5_vl_post_decoder")
Qwen3VLPostDecoderConfig = _with_block(Qwen3VLConfig, "qwen3_vl_post_decoder")


def vision_widths(vision_config) -> tuple[int, int]:
    """(the vision encoder's width before the patch merger, the merger's output width). Qwen2-VL names them
    `embed_dim` and `hidden_size`; Qwen2.5-VL and Qwen3-VL `hidden_size` and `out_hidden_size`."""
    if hasattr(vision_config, "out_hidden_size"):
        return vision_config.hidden_size, vision_config.out_hidden_size
    return vision_config.embed_dim, vision_config.hidden_size


def qwen_vl_block_sizes(config, vision_source: str) -> dict[str, int]:
    """The LLM's width, heads and MLP width; the vision features' width is the encoder's before the patch merger
    (`vision_tower`) or the merger's output, the LLM's width (`projector`)."""
    text = config.text_config
    encoder, merger = vision_widths(config.vision_config)
    return {
        "hidden_size": text.hidden_size,
        "vision_hidden_size": merger if vision_source == "projector" else encoder,
        "num_attention_heads": text.num_attention_heads,
        "intermediate_size": text.intermediate_size,
    }
