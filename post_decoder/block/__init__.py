"""The post-interaction block: its config, the module and its state, and its own files. Nothing about a family."""

from .configuration import VARIANTS, PostDecoderConfig
from .module import ZERO_INIT_ATTRIBUTE, PostDecoderState, PostInteractionBlock

__all__ = ["VARIANTS", "ZERO_INIT_ATTRIBUTE", "PostDecoderConfig", "PostDecoderState", "PostInteractionBlock"]
