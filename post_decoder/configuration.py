"""Configs: the post-interaction block's own, and LLaVA's with a block attached."""

from transformers import LlavaConfig, PreTrainedConfig

from .compat import SubConfigSpec

VARIANTS = ("post_interaction", "align_linear", "no_cross_attn", "transformer_block")
VISION_SOURCES = ("vision_tower", "projector")


class PostDecoderConfig(PreTrainedConfig):
    """The post-interaction block between the LLM backbone and `lm_head`.

    Fields left at `None` are taken from the backbone by `resolved_for`: the text hidden size,
    its attention heads and MLP width (a 1-layer block on LLaVA-1.5-7B is 223M parameters).

    variant:
        `post_interaction`  align MLP (Dv -> D -> D, GELU), cross-attention to the image, SwiGLU MLP;
        `align_linear`      the same with a single Linear as the align;
        `no_cross_attn`     the MLP alone: the control that cannot see the image;
        `transformer_block` causal self-attention over the sequence before the cross-attention
                            (the only variant that is not token-wise).
    vision_source:
        `vision_tower` (default) the tower's selected layer, CLS dropped, before the projector
        ([576, 1024] on LLaVA-1.5-7B); `projector` the projector's output ([576, 4096]).
    """

    model_type = "post_decoder"

    variant: str = "post_interaction"
    vision_source: str = "vision_tower"
    num_layers: int = 1
    hidden_size: int | None = None
    vision_hidden_size: int | None = None
    num_attention_heads: int | None = None
    intermediate_size: int | None = None
    rms_norm_eps: float = 1e-5
    initializer_range: float = 0.02

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        if self.variant not in VARIANTS:
            raise ValueError(f"unknown post-decoder variant {self.variant!r}; choose one of {', '.join(VARIANTS)}")
        if self.vision_source not in VISION_SOURCES:
            raise ValueError(
                f"unknown post-decoder vision_source {self.vision_source!r}; choose one of {', '.join(VISION_SOURCES)}"
            )
        if self.num_layers < 1:
            raise ValueError(f"post-decoder num_layers must be >= 1, got {self.num_layers}")

    @property
    def uses_cross_attention(self) -> bool:
        return self.variant != "no_cross_attn"

    @property
    def uses_self_attention(self) -> bool:
        return self.variant == "transformer_block"

    def resolved_for(self, llava_config: LlavaConfig) -> "PostDecoderConfig":
        """A copy with every `None` size filled in from the backbone's config."""
        text = llava_config.text_config
        vision_hidden = (
            text.hidden_size if self.vision_source == "projector" else _vision_feature_size(llava_config)
        )
        values = self.to_dict()
        for key, default in (
            ("hidden_size", text.hidden_size),
            ("vision_hidden_size", vision_hidden),
            ("num_attention_heads", text.num_attention_heads),
            ("intermediate_size", text.intermediate_size),
        ):
            if values.get(key) is None:
                values[key] = default
        resolved = PostDecoderConfig(**{k: v for k, v in values.items() if k != "model_type"})
        if resolved.hidden_size != text.hidden_size:
            raise ValueError(
                f"post-decoder hidden_size {resolved.hidden_size} must equal the backbone's {text.hidden_size}: "
                "the block's output goes to lm_head"
            )
        if resolved.hidden_size % resolved.num_attention_heads:
            raise ValueError(
                f"post-decoder hidden_size {resolved.hidden_size} is not divisible by "
                f"num_attention_heads {resolved.num_attention_heads}"
            )
        return resolved


def _vision_feature_size(llava_config: LlavaConfig) -> int:
    layers = llava_config.vision_feature_layer
    count = 1 if isinstance(layers, int) else len(layers)
    return llava_config.vision_config.hidden_size * count


class LlavaPostDecoderConfig(LlavaConfig):
    """`LlavaConfig` plus an optional `post_decoder_config` (None: a plain LLaVA)."""

    model_type = "llava_post_decoder"
    if SubConfigSpec is not None:
        sub_configs_defaults = {
            **LlavaConfig.sub_configs_defaults,
            "post_decoder_config": SubConfigSpec(PostDecoderConfig, optional=True),
        }
    else:  # transformers < 5.20
        sub_configs = {**LlavaConfig.sub_configs, "post_decoder_config": PostDecoderConfig}

    post_decoder_config: dict | PostDecoderConfig | None = None

    def __post_init__(self, **kwargs):
        # Built here, not left to SubConfigSpec: before transformers 5.20 each config builds its own sub-configs.
        if isinstance(self.post_decoder_config, dict):
            values = {key: value for key, value in self.post_decoder_config.items() if key != "model_type"}
            self.post_decoder_config = PostDecoderConfig(**values)
        super().__post_init__(**kwargs)

    @classmethod
    def from_llava_config(
        cls, llava_config: LlavaConfig, post_decoder_config: PostDecoderConfig | None = None
    ) -> "LlavaPostDecoderConfig":
        values = llava_config.to_dict()
        values.pop("model_type", None)
        values.pop("post_decoder_config", None)
        if post_decoder_config is not None:
            post_decoder_config = post_decoder_config.resolved_for(llava_config)
        return cls(**values, post_decoder_config=post_decoder_config)
