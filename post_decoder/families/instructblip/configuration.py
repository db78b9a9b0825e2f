"""InstructBLIP's config with an optional block, and the sizes a block on InstructBLIP takes."""

from transformers import InstructBlipConfig

from ...block import PostDecoderConfig
from ...compat import SubConfigSpec


class InstructBlipPostDecoderConfig(InstructBlipConfig):
    """`InstructBlipConfig` plus an optional `post_decoder_config` (None: a plain InstructBLIP)."""

    model_type = "instructblip_post_decoder"
    if SubConfigSpec is not None:
        sub_configs_defaults = {
            **InstructBlipConfig.sub_configs_defaults,
            "post_decoder_config": SubConfigSpec(PostDecoderConfig, optional=True),
        }
    else:  # transformers < 5.20
        sub_configs = {**InstructBlipConfig.sub_configs, "post_decoder_config": PostDecoderConfig}

    post_decoder_config: dict | PostDecoderConfig | None = None

    def __post_init__(self, **kwargs):
        # Built here, not left to SubConfigSpec: before transformers 5.20 each config builds its own sub-configs.
        if isinstance(self.post_decoder_config, dict):
            values = {key: value for key, value in self.post_decoder_config.items() if key != "model_type"}
            self.post_decoder_config = PostDecoderConfig(**values)
        super().__post_init__(**kwargs)

    @classmethod
    def from_instructblip_config(
        cls, config: InstructBlipConfig, post_decoder_config: PostDecoderConfig | None = None
    ) -> "InstructBlipPostDecoderConfig":
        values = config.to_dict()
        values.pop("model_type", None)
        values.pop("post_decoder_config", None)
        if post_decoder_config is not None:
            post_decoder_config = post_decoder_config.resolved_for(config)
        return cls(**values, post_decoder_config=post_decoder_config)


def instructblip_block_sizes(config: InstructBlipConfig, vision_source: str) -> dict[str, int]:
    """The block's sizes on InstructBLIP: the LLM's width, heads and MLP width; the vision features' width is the
    vision encoder's (`vision_tower`: its output after the final layer norm, 1408 on EVA ViT-g) or the LLM's
    (`projector`: the 32 query outputs after `language_projection`)."""
    text = config.text_config
    vision_hidden = text.hidden_size if vision_source == "projector" else config.vision_config.hidden_size
    return {
        "hidden_size": text.hidden_size,
        "vision_hidden_size": vision_hidden,
        "num_attention_heads": text.num_attention_heads,
        "intermediate_size": text.intermediate_size,
    }
