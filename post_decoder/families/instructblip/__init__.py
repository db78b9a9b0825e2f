"""InstructBLIP-Vicuna (the hub's `Salesforce/instructblip-vicuna-*` layout, LAVIS's prompt, the Q-Former reading
the question)."""

from transformers import AutoConfig, AutoModelForImageTextToText

from ...family import register_family
from .configuration import InstructBlipPostDecoderConfig
from .family import InstructBlipFamily
from .modeling import InstructBlipPostDecoderForConditionalGeneration, InstructBlipPostDecoderOutput

INSTRUCTBLIP = register_family(InstructBlipFamily())

AutoConfig.register(InstructBlipPostDecoderConfig.model_type, InstructBlipPostDecoderConfig, exist_ok=True)
AutoModelForImageTextToText.register(
    InstructBlipPostDecoderConfig, InstructBlipPostDecoderForConditionalGeneration, exist_ok=True
)

__all__ = [
    "INSTRUCTBLIP",
    "InstructBlipFamily",
    "InstructBlipPostDecoderConfig",
    "InstructBlipPostDecoderForConditionalGeneration",
    "InstructBlipPostDecoderOutput",
]
