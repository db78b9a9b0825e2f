"""One sub-package per backbone family; importing this registers them all (see post_decoder/family.py)."""

from . import (
    instructblip,  # noqa: F401  (registers InstructBLIP-Vicuna)
    llava,  # noqa: F401  (registers LLaVA-1.5)
    minigpt4,  # noqa: F401  (registers MiniGPT-4, Llama-2-chat and Vicuna versions)
    qwen_vl,  # noqa: F401  (registers Qwen2.5-VL, Qwen2-VL, Qwen3-VL)
)
