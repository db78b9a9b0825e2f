"""LLaVA-1.5's `pad` image preprocessing, without torchvision.

LLaVA-1.5 pads every image to a square with the processor's mean colour, then applies CLIP's
preprocessing (resize the short side, centre crop, rescale, normalise). llava-hf's processor
skips the padding; we always pad, as the original models were trained.
"""

from transformers.models.llava.image_processing_pil_llava import LlavaImageProcessorPil


def load_image_processor(path: str) -> LlavaImageProcessorPil:
    """Read a CLIP/LLaVA `preprocessor_config.json` (local folder or hub id) with padding on."""
    return LlavaImageProcessorPil.from_pretrained(path, do_pad=True)
