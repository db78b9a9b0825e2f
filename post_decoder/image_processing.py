"""Images in, pixel values out: LLaVA-1.5's `pad` preprocessing without torchvision.

LLaVA-1.5 pads every image to a square with the processor's mean colour, then applies CLIP's
preprocessing (resize the short side, centre crop, rescale, normalise). llava-hf's processor
skips the padding; we always pad, as the original models were trained.
"""

import os

import torch
from PIL import Image, UnidentifiedImageError
from transformers.models.llava.image_processing_pil_llava import LlavaImageProcessorPil


def load_image_processor(path: str) -> LlavaImageProcessorPil:
    """Read a CLIP/LLaVA `preprocessor_config.json` (local folder or hub id) with padding on."""
    return LlavaImageProcessorPil.from_pretrained(path, do_pad=True)


def open_image(path: str) -> Image.Image:
    """An RGB PIL image; greyscale, palette and RGBA become RGB. A bad file names itself."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"image not found: {path}")
    try:
        with Image.open(path) as image:
            return to_rgb(image)
    except (UnidentifiedImageError, OSError) as error:
        raise ValueError(f"cannot read image {path}: {error}") from error


def to_rgb(image: Image.Image) -> Image.Image:
    if image.mode in ("RGBA", "LA") or (image.mode == "P" and "transparency" in image.info):
        # Transparent pixels become white, not the black that a bare convert("RGB") gives.
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def preprocess_images(images: list[Image.Image], processor: LlavaImageProcessorPil) -> torch.Tensor:
    """[len(images), 3, H, W] float pixel values."""
    rgb = [to_rgb(image) for image in images]
    return processor(images=rgb, return_tensors="pt")["pixel_values"]

