"""LLaVA-1.5 (llava-hf and original checkpoints, vicuna_v1 prompts, CLIP `pad` preprocessing)."""

from transformers import AutoConfig, AutoModelForImageTextToText
from transformers.conversion_mapping import get_checkpoint_conversion_mapping, register_checkpoint_conversion_mapping

from ...family import register_family
from .configuration import LlavaPostDecoderConfig
from .family import LlavaFamily
from .modeling import LlavaPostDecoderForConditionalGeneration, LlavaPostDecoderOutput

LLAVA = register_family(LlavaFamily())

AutoConfig.register(LlavaPostDecoderConfig.model_type, LlavaPostDecoderConfig, exist_ok=True)
AutoModelForImageTextToText.register(LlavaPostDecoderConfig, LlavaPostDecoderForConditionalGeneration, exist_ok=True)
# Our model type reads llava-hf checkpoints (old and new key layouts) exactly as LLaVA does.
register_checkpoint_conversion_mapping(
    LlavaPostDecoderConfig.model_type, get_checkpoint_conversion_mapping("llava"), overwrite=True
)

__all__ = [
    "LLAVA",
    "LlavaFamily",
    "LlavaPostDecoderConfig",
    "LlavaPostDecoderForConditionalGeneration",
    "LlavaPostDecoderOutput",
]
