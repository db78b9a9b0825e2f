"""A backbone's config class with an optional block (`post_decoder_config`, None: the plain model): what every
family's configuration shares."""

from .block import PostDecoderConfig
from .compat import SubConfigSpec


def config_class_with_block(
    base: type, model_type: str | None = None, name: str | None = None, module: str = __name__
) -> type:
    """`base` (a transformers config class) plus an optional `post_decoder_config`, built from a dict when read from
    config.json. Subclass it (setting `model_type`), or pass `model_type`, `name` and `module` for the class itself."""
    if SubConfigSpec is not None:
        extra = {
            "sub_configs_defaults": {
                **base.sub_configs_defaults,
                "post_decoder_config": SubConfigSpec(PostDecoderConfig, optional=True),
            }
        }
    else:  # transformers < 5.20
        extra = {"sub_configs": {**base.sub_configs, "post_decoder_config": PostDecoderConfig}}
    if model_type is not None:
        extra["model_type"] = model_type

    def __post_init__(self, **kwargs):
        # Built here, not left to SubConfigSpec: before transformers 5.20 each config builds its own sub-configs.
        if isinstance(self.post_decoder_config, dict):
            values = {key: value for key, value in self.post_decoder_config.items() if key != "model_type"}
            self.post_decoder_config = PostDecoderConfig(**values)
        base.__post_init__(self, **kwargs)

    name = name or base.__name__.removesuffix("Config") + "ConfigWithBlock"
    namespace = {
        "__module__": module,
        "__qualname__": name,
        "__doc__": f"`{base.__name__}` plus an optional `post_decoder_config` (None: the plain model).",
        "__annotations__": {"post_decoder_config": dict | PostDecoderConfig | None},
        "post_decoder_config": None,
        "__post_init__": __post_init__,
        **extra,
    }
    return type(name, (base,), namespace)


def with_block_config(config_class: type, backbone_config, post_decoder_config: PostDecoderConfig | None = None):
    """`config_class` (one of the above) holding `backbone_config`'s values (a plain config or ours) and the block's
    config, its sizes resolved against the backbone."""
    values = backbone_config.to_dict()
    values.pop("model_type", None)
    values.pop("post_decoder_config", None)
    if post_decoder_config is not None:
        post_decoder_config = post_decoder_config.resolved_for(backbone_config)
    return config_class(**values, post_decoder_config=post_decoder_config)
