"""The post-interaction block's config: its variant and sizes, nothing about the backbone it sits on."""

from transformers import PreTrainedConfig

from ..family import family_for

VARIANTS = ("post_interaction", "align_linear", "no_cross_attn", "transformer_block")
VISION_SOURCES = ("vision_tower", "projector")


class PostDecoderConfig(PreTrainedConfig):
    """The post-interaction block between the LLM backbone and `lm_head`.

    Fields left at `None` are taken from the backbone by `resolved_for`: the text hidden size,
    its attention heads and MLP width, the vision features' width (a 1-layer block on LLaVA-1.5-7B
    is 223M parameters).

    variant:
        `post_interaction`  align MLP (Dv -> D -> D, GELU), cross-attention to the image, SwiGLU MLP;
        `align_linear`      the same with a single Linear as the align;
        `no_cross_attn`     the MLP alone: the control that cannot see the image;
        `transformer_block` causal self-attention over the sequence before the cross-attention
                            (the only variant that is not token-wise).
    vision_source:
        `vision_tower` (default) the tower's features before the projector (on LLaVA-1.5-7B its
        selected layer, CLS dropped: [576, 1024]); `projector` the projector's output ([576, 4096]).
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

    def resolved_for(self, backbone_config) -> "PostDecoderConfig":
        """A copy with every `None` size filled in from the backbone's config (its family says which sizes)."""
        sizes = family_for(backbone_config).block_sizes(backbone_config, self.vision_source)
        values = self.to_dict()
        for key, default in sizes.items():
            if values.get(key) is None:
                values[key] = default
        resolved = PostDecoderConfig(**{k: v for k, v in values.items() if k != "model_type"})
        if resolved.hidden_size != sizes["hidden_size"]:
            raise ValueError(
                f"post-decoder hidden_size {resolved.hidden_size} must equal the backbone's {sizes['hidden_size']}: "
                "the block's output goes to lm_head"
            )
        if resolved.hidden_size % resolved.num_attention_heads:
            raise ValueError(
                f"post-decoder hidden_size {resolved.hidden_size} is not divisible by "
                f"num_attention_heads {resolved.num_attention_heads}"
            )
        return resolved
