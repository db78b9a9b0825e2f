"""A post-interaction block between a vision-language model's LLM backbone and its `lm_head`.

Importing the package registers the block's config and every backbone family (`post_decoder/families/`)
with the family registry and transformers' Auto classes.
"""

from transformers import AutoConfig

from . import families  # noqa: F401  (registers the families)
from .block import VARIANTS, PostDecoderConfig, PostDecoderState, PostInteractionBlock
from .family import BackboneFamily, BackboneOutput, family_for

AutoConfig.register(PostDecoderConfig.model_type, PostDecoderConfig, exist_ok=True)

__all__ = [
    "VARIANTS",
    "BackboneFamily",
    "BackboneOutput",
    "PostDecoderConfig",
    "PostDecoderState",
    "PostInteractionBlock",
    "family_for",
]
