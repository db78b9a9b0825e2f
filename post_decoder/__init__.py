"""A post-interaction block between a vision-language model's LLM backbone and its `lm_head`."""

from transformers import AutoConfig, AutoModelForImageTextToText
from transformers.conversion_mapping import get_checkpoint_conversion_mapping, register_checkpoint_conversion_mapping

from .backbone import BackboneOutput
from .block import PostDecoderState, PostInteractionBlock
from .configuration import VARIANTS, LlavaPostDecoderConfig, PostDecoderConfig
from .modeling_llava import LlavaPostDecoderForConditionalGeneration, LlavaPostDecoderOutput

AutoConfig.register(PostDecoderConfig.model_type, PostDecoderConfig, exist_ok=True)
AutoConfig.register(LlavaPostDecoderConfig.model_type, LlavaPostDecoderConfig, exist_ok=True)
AutoModelForImageTextToText.register(
    LlavaPostDecoderConfig, LlavaPostDecoderForConditionalGeneration, exist_ok=True
)
# Our model type reads llava-hf checkpoints (old and new key layouts) exactly as LLaVA does.
register_checkpoint_conversion_mapping(
    LlavaPostDecoderConfig.model_type, get_checkpoint_conversion_mapping("llava"), overwrite=True
)

__all__ = [
    "VARIANTS",
    "BackboneOutput",
    "LlavaPostDecoderConfig",
    "LlavaPostDecoderForConditionalGeneration",
    "LlavaPostDecoderOutput",
    "PostDecoderConfig",
    "PostDecoderState",
    "PostInteractionBlock",
]
