"""Qwen2-VL, Qwen2.5-VL and Qwen3-VL configs with an optional block, and the sizes a block on them takes."""

from transformers import Qwen2_5_VLConfig, Qwen2VLConfig, Qwen3VLConfig

from ...block import PostDecoderConfig
from ...compat import SubConfigSpec


def _with_block(base: type, model_type: str) -> type:
    """`base` plus an optional `post_decoder_config` (None: the plain model), under its own `model_type`."""
    if SubConfigSpec is not None:
        extra = {
            "sub_configs_defaults": {
                **base.sub_configs_defaults,
                "post_decoder_config": SubConfigSpec(PostDecoderConfig, optional=True),
            }
        }
    else:  # transformers < 5.20
        extra = {"sub_configs": {**base.sub_configs, "post_decoder_config": PostDecoderConfig}}

    def __post_init__(self, **kwargs):
        # Built here, not left to SubConfigSpec: before transformers 5.20 each config builds its own sub-configs.
        if isinstance(self.post_decoder_config, dict):
            values = {key: value for key, value in self.post_decoder_config.items() if key != "model_type"}
            self.post_decoder_config = PostDecoderConfig(**values)
        base.__post_init__(self, **kwargs)

    name = base.__name__.removesuffix("Config") + "PostDecoderConfig"
    namespace = {
        "__module__": __name__,
        "__qualname__": name,
        "__doc__": f"`{base.__name__}` plus an optional `post_decoder_config` (None: the plain model).",
        "__annotations__": {"post_decoder_config": dict | PostDecoderConfig | None},
        "model_type": model_type,
        "post_decoder_config": None,
        "__post_init__": __post_init__,
        **extra,
    }
    return type(name, (base,), namespace)


Qwen2VLPostDecoderConfig = _with_block(Qwen2VLConfig, "qwen2_vl_post_decoder")
Qwen2_5_VLPostDecoderConfig = _with_block(Qwen2_5_VLConfig, "qwen2_5_vl_post_decoder")
Qwen3VLPostDecoderConfig = _with_block(Qwen3VLConfig, "qwen3_vl_post_decoder")


def with_block_config(config_class: type, backbone_config, post_decoder_config: PostDecoderConfig | None = None):
    """Our config class holding `backbone_config`'s values (a plain Qwen-VL config or ours) and the block's."""
    values = backbone_config.to_dict()
    values.pop("model_type", None)
    values.pop("post_decoder_config", None)
    if post_decoder_config is not None:
        post_decoder_config = post_decoder_config.resolved_for(backbone_config)
    return config_class(**values, post_decoder_config=post_decoder_config)


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
