"""MiniGPT-4's image preprocessing (`blip2_image_eval`: resize to 224 x 224, bicubic; CLIP's mean and std) as
transformers' BLIP image processor, which transformers' BLIP-2 conversion checked gives the same pixel values."""

from PIL import Image
from transformers.image_utils import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
from transformers.models.blip.image_processing_pil_blip import BlipImageProcessorPil


def minigpt4_image_processor(image_size: int = 224) -> BlipImageProcessorPil:
    return BlipImageProcessorPil(
        size={"height": image_size, "width": image_size},
        resample=Image.Resampling.BICUBIC,
        image_mean=list(OPENAI_CLIP_MEAN),
        image_std=list(OPENAI_CLIP_STD),
        do_convert_rgb=True,
    )


def load_image_processor(path: str) -> BlipImageProcessorPil:
    """The `preprocessor_config.json` of a converted MiniGPT-4 folder."""
    return BlipImageProcessorPil.from_pretrained(path)
