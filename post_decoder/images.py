"""Images in, model inputs out: decoding any file PIL reads into RGB, then the family's image processor
(`family.load` returns it; LLaVA-1.5's is in `families/llava/image_processing.py`).

`model_image_inputs` is what any family's model takes (`family.image_inputs`: LLaVA's `pixel_values`, Qwen-VL's
`pixel_values` and `image_grid_thw`); `preprocess_images` and `pixel_values` are the pixel values alone, for families
whose images are nothing more (LLaVA-1.5).
"""

import os

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from .errors import InputError

# What PIL raises on a file it cannot decode (a truncated JPEG raises OSError only when decoded).
UNREADABLE_IMAGE_ERRORS = (UnidentifiedImageError, OSError, SyntaxError, EOFError, Image.DecompressionBombError)


def open_image(path: str) -> Image.Image:
    """An RGB PIL image, decoded whole; greyscale, 16-bit, palette and RGBA become RGB. A bad file names itself."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"image not found: {path}")
    try:
        with Image.open(path) as image:
            return to_rgb(image)
    except UNREADABLE_IMAGE_ERRORS as error:
        raise InputError(f"cannot read image {path}: {type(error).__name__}: {error}") from error


def sixteen_bit_to_8_bit(image: Image.Image) -> Image.Image:
    """An `I;16*` or `I` image as 8-bit greyscale, keeping each value's high byte (v >> 8): what Pillow
    itself does when it decodes 16-bit colour PNGs (raw mode `RGB;16B`) and libpng's `png_set_strip_16`,
    which image viewers use. PIL's own `convert("L")` clips at 255 instead, so almost everything is white."""
    values = np.asarray(image).astype(np.int64)  # `I` is 32-bit signed: values outside 16 bits are clipped
    return Image.fromarray((np.clip(values, 0, 65535) >> 8).astype(np.uint8), "L")


def to_rgb(image: Image.Image) -> Image.Image:
    if image.mode.startswith("I;16") or image.mode == "I":
        image = sixteen_bit_to_8_bit(image)
    if image.mode in ("RGBA", "LA") or (image.mode == "P" and "transparency" in image.info):
        # Transparent pixels become white, not the black that a bare convert("RGB") gives.
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def preprocess_images(images: list[Image.Image], processor) -> torch.Tensor:
    """[len(images), 3, H, W] float pixel values."""
    rgb = [to_rgb(image) for image in images]
    return processor(images=rgb, return_tensors="pt")["pixel_values"]


def pixel_values(model, processor, images: list[Image.Image]) -> torch.Tensor:
    """`images`' pixel values on the model's device, in its dtype: what its forward and `generate` take, for a
    family whose image inputs are pixel values only (LLaVA-1.5; others: `model_image_inputs`)."""
    inputs = model_image_inputs(model, processor, images)
    if set(inputs) != {"pixel_values"}:
        raise ValueError(f"this model's images take {sorted(inputs)}: call model_image_inputs, not pixel_values")
    return inputs["pixel_values"]


def model_image_inputs(model, processor, images: list[Image.Image]) -> dict[str, torch.Tensor]:
    """`images`' keyword inputs for `model` (its family's `image_inputs`) on its device, floats in its dtype."""
    from .family import family_for  # here: family.py imports this module

    inputs = family_for(model).image_inputs([to_rgb(image) for image in images], processor)
    return {name: _on_model(model, value) for name, value in inputs.items()}


def _on_model(model, value: torch.Tensor) -> torch.Tensor:
    return value.to(model.device, model.dtype) if value.is_floating_point() else value.to(model.device)
