"""One sub-package per backbone family; importing this registers them all (see post_decoder/family.py)."""

from . import (
    instructblip,  # noqa: F401  (registers InstructBLIP-Vicuna)
    llava,  # noqa: F401  (registers LLaVA-1.5)
    qwen_vl,  # noqa: F401  (registers Qwen2.5-VL, Qwen2-VL, Qwen3-VL)
)
