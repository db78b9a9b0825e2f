"""MiniGPT-4 (Llama-2-chat or Vicuna) as transformers' BLIP-2 with a Llama language model: its configuration,
model, prompt templates, and the converter of its released files (`python -m post_decoder.families.minigpt4`)."""

from transformers import AutoConfig, AutoModelForImageTextToText

from ...family import register_family
from .configuration import MiniGPT4Config
from .family import MiniGPT4Family
from .modeling import MiniGPT4ForConditionalGeneration, MiniGPT4PostDecoderOutput

MINIGPT4 = register_family(MiniGPT4Family())

AutoConfig.register(MiniGPT4Config.model_type, MiniGPT4Config, exist_ok=True)
AutoModelForImageTextToText.register(MiniGPT4Config, MiniGPT4ForConditionalGeneration, exist_ok=True)

__all__ = [
    "MINIGPT4",
    "MiniGPT4Config",
    "MiniGPT4Family",
    "MiniGPT4ForConditionalGeneration",
    "MiniGPT4PostDecoderOutput",
]
