"""Qwen2-VL, Qwen2.5-VL and Qwen3-VL (transformers' own classes, hub and saved folders, their chat template,
dynamic resolution, M-RoPE)."""

from transformers import (
    AutoConfig,
    AutoModelForImageTextToText,
    Qwen2_5_VLConfig,
    Qwen2VLConfig,
    Qwen3VLConfig,
)
from transformers.conversion_mapping import get_checkpoint_conversion_mapping, register_checkpoint_conversion_mapping

from ...family import register_family
from .configuration import Qwen2_5_VLPostDecoderConfig, Qwen2VLPostDecoderConfig, Qwen3VLPostDecoderConfig
from .family import QwenVLFamily
from .modeling import (
    Qwen2_5_VLPostDecoderForConditionalGeneration,
    Qwen2VLPostDecoderForConditionalGeneration,
    Qwen3VLPostDecoderForConditionalGeneration,
    QwenVLPostDecoderOutput,
)

QWEN2_5_VL = register_family(
    QwenVLFamily(
        "Qwen2.5-VL",
        Qwen2_5_VLPostDecoderConfig,
        Qwen2_5_VLConfig,
        Qwen2_5_VLPostDecoderForConditionalGeneration,
        "qwen2_vl",
    )
)
QWEN2_VL = register_family(
    QwenVLFamily(
        "Qwen2-VL", Qwen2VLPostDecoderConfig, Qwen2VLConfig, Qwen2VLPostDecoderForConditionalGeneration, "qwen2_vl"
    )
)
QWEN3_VL = register_family(
    QwenVLFamily(
        "Qwen3-VL", Qwen3VLPostDecoderConfig, Qwen3VLConfig, Qwen3VLPostDecoderForConditionalGeneration, "qwen3_vl"
    )
)

for _family, _plain_class in (
    (QWEN2_5_VL, "Qwen2_5_VLForConditionalGeneration"),
    (QWEN2_VL, "Qwen2VLForConditionalGeneration"),
    (QWEN3_VL, "Qwen3VLForConditionalGeneration"),
):
    AutoConfig.register(_family.config_class.model_type, _family.config_class, exist_ok=True)
    AutoModelForImageTextToText.register(_family.config_class, _family.model_class, exist_ok=True)
    # Our classes read hub folders (`model.*`, `visual.*` keys) exactly as transformers' own do.
    _mapping = get_checkpoint_conversion_mapping(_plain_class)
    if _mapping is not None:
        for _name in (_family.config_class.model_type, _family.model_class.__name__):
            register_checkpoint_conversion_mapping(_name, _mapping, overwrite=True)

__all__ = [
    "QWEN2_5_VL",
    "QWEN2_VL",
    "QWEN3_VL",
    "Qwen2_5_VLPostDecoderConfig",
    "Qwen2_5_VLPostDecoderForConditionalGeneration",
    "Qwen2VLPostDecoderConfig",
    "Qwen2VLPostDecoderForConditionalGeneration",
    "Qwen3VLPostDecoderConfig",
    "Qwen3VLPostDecoderForConditionalGeneration",
    "QwenVLFamily",
    "QwenVLPostDecoderOutput",
]
